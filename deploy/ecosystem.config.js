/**
 * PM2 process file for loosh-miner, for operators who run the Python miner under PM2.
 *
 *   pm2 start deploy/ecosystem.config.js
 *   pm2 logs loosh-miner
 *   pm2 save && pm2 startup      # start on boot
 *
 * The miner reads its configuration from ./.env itself (the repository root below), so no
 * variables are copied here. With LLM_BACKEND=vllm, start the vLLM server as its own PM2 app (the
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
      exp_backoff_restart_delay: 1000,
      max_restarts: 10,
      min_uptime: '60s',
      // SIGTERM drains: up to 55 s of in-flight challenges, then up to 30 s for the engines to stop.
      kill_timeout: 100000,
      // The miner timestamps its own lines; PM2 adds nothing and merges stdout and stderr.
      time: false,
      merge_logs: true,
      out_file: path.join(root, 'logs', 'loosh-miner.log'),
      error_file: path.join(root, 'logs', 'loosh-miner.log'),
    },
  ],
};
