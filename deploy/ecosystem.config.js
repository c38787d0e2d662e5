/**
 * PM2 process file for loosh-miner, for operators who run the Python miner under PM2.
 *
 *   pm2 start deploy/ecosystem.config.js
 *   pm2 logs loosh-miner
 *   pm2 save && pm2 startup      # start on boot
 *
 * The miner reads its configuration from ./.env itself (the repository root below), so no
 * variables are copied here; `pm2 sendSignal SIGHUP loosh-miner` re-reads it.
 *
 * Switching from the Python miner: `pm2 stop loosh-inference-miner && pm2 delete
 * loosh-inference-miner` first (both listen on API_PORT 8000). With LLM_BACKEND=vllm, start the vLLM server as its own PM2 app (the
 * Python miner's PM2/ecosystem.config.js does that) or name its command in WORKERS.
 */
const path = require('path');

const root = path.join(__dirname, '..');

module.exports = {
  apps: [
    {
      name: 'loosh-miner',
      // `cargo build --release` puts it here; LOOSH_MINER_BIN names another (an installed copy).
      script: process.env.LOOSH_MINER_BIN || path.join(root, 'target', 'release', 'loosh-miner'),
      interpreter: 'none',
      cwd: root,
      autorestart: true,
      // Back off between restarts (PM2 doubles it up to 15 s), and give up after 10 quick failures.
      // A chain outage at start is waited out by the miner itself; exit status 78 (EX_CONFIG: a
      // wrong setting, a missing or unregistered hotkey) is not restarted.
      exp_backoff_restart_delay: 1000,
      max_restarts: 10,
      min_uptime: '60s',
      stop_exit_codes: [78],
      // SIGTERM drains: up to 55 s of in-flight challenges, then up to 30 s for the engines to stop.
      // The signal goes to the miner only (treekill would signal engine children and managed
      // servers at once, killing their challenges); the miner stops them itself.
      kill_signal: 'SIGTERM',
      treekill: false,
      kill_timeout: 100000,
      // The miner timestamps its own lines; PM2 adds nothing and merges stdout and stderr.
      time: false,
      merge_logs: true,
      out_file: path.join(root, 'logs', 'loosh-miner.log'),
      error_file: path.join(root, 'logs', 'loosh-miner.log'),
    },
  ],
};
