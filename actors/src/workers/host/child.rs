//! The child side: an engine process (the node's own binary, run with the hidden
//! [`CHILD_SUBCOMMAND`]) that loads one model and serves the jobs its worker sends over stdin,
//! answering on stdout (see [`super::frame`]). It logs to stderr, which its worker reads.
//!
//! It never outlives the node: the kernel kills it when the thread that started it ends (the
//! worker's host thread lives until the child is reaped, and ends with the node, `kill -9`
//! included), and it exits by itself once its stdin closes and its last answer is out.
//!
//! It ignores SIGTERM and SIGINT: a stop signal sent to the whole process group (systemd's default
//! `KillMode`, PM2's `treekill`, Ctrl-C in a terminal) is the node's to act on. The node drains its
//! challenges and then closes our stdin; an engine that died at the signal would fail them.

use std::io::{self, BufWriter, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::Instant;

use super::batching::{serve, Host, Job};
use super::frame::{read_frame, write_frame, FromEngine, ToEngine, WireGeneration, STATS_EVERY};
use crate::inference::embedded::{load_model, EmbeddedEngine, EmbeddedSpec, StepStats};
use crate::inference::request::{BackendError, Generation, JobControl};

/// The hidden subcommand that runs an engine child.
pub const CHILD_SUBCOMMAND: &str = "engine-child";

/// The node's pid, given to the child: if the node died before the child asked to die with it,
/// the child sees another parent and exits at once.
pub const PARENT_PID_VAR: &str = "LOOSH_ENGINE_PARENT_PID";

/// Runs an engine child on this process's stdin and stdout; returns the exit code. Exit code 0
/// means a clean end (stdin closed, every answer sent; or a model that failed to load, reported in
/// the `Ready` frame).
pub fn run_engine_child() -> i32 {
    ignore_stop_signals();
    if !die_with_parent() {
        return 1;
    }
    let mut stdin = io::stdin();
    let spec: EmbeddedSpec = match read_frame::<ToEngine>(&mut stdin) {
        Ok(Some(ToEngine::Start(spec))) => spec,
        Ok(Some(_)) | Ok(None) => {
            tracing::error!("the first frame from the worker must be Start");
            return 2;
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot read the Start frame");
            return 2;
        }
    };
    let Some(frames) = take_stdout_for_frames() else {
        return 1;
    };
    let mut out = BufWriter::new(frames);
    let model = match load_model(&spec) {
        Ok(m) => m,
        Err(e) => return report_failed_start(&mut out, e),
    };
    let mut engine: EmbeddedEngine<'_, u64> = match EmbeddedEngine::new(&model, &spec) {
        Ok(e) => e,
        Err(e) => return report_failed_start(&mut out, e),
    };
    if send(&mut out, &FromEngine::Ready(Ok(engine.info()))).is_err() {
        return 1;
    }
    let hooks = Arc::new(Hooks::default());
    let (jobs, inbox) = mpsc::channel();
    let reader_hooks = hooks.clone();
    thread::Builder::new()
        .name("engine-stdin".into())
        .spawn(move || read_jobs(stdin, jobs, &reader_hooks))
        .expect("a thread for the worker's frames");
    serve(&mut engine, &inbox, &mut ChildHost { out, last_stats: Instant::now(), hooks });
    // The engine, then the model, are freed before the process exits (a GPU context freed after
    // the CUDA driver shut down aborts the process).
    0
}

fn report_failed_start(out: &mut impl Write, e: BackendError) -> i32 {
    tracing::error!(error = %e, "the engine did not start");
    if send(out, &FromEngine::Ready(Err(e))).is_err() {
        return 1;
    }
    0
}

fn send(out: &mut impl Write, frame: &FromEngine) -> io::Result<()> {
    write_frame(out, frame)?;
    out.flush()
}

/// The frames get the original stdout to themselves; fd 1 then points at stderr, so that a stray
/// `printf` in llama.cpp or a driver lands in the log instead of corrupting the frame stream.
fn take_stdout_for_frames() -> Option<std::fs::File> {
    use std::os::fd::FromRawFd;
    // SAFETY: dup and dup2 on the process's own standard descriptors; the duplicate is owned by
    // the File alone.
    unsafe {
        let frames = libc::dup(libc::STDOUT_FILENO);
        if frames < 0 || libc::dup2(libc::STDERR_FILENO, libc::STDOUT_FILENO) < 0 {
            tracing::error!(error = %io::Error::last_os_error(), "cannot set stdout aside for the frames");
            return None;
        }
        Some(std::fs::File::from_raw_fd(frames))
    }
}

/// SIGTERM and SIGINT are for the node (see the module's doc); we stop when our stdin closes.
fn ignore_stop_signals() {
    // SAFETY: setting a signal's disposition to SIG_IGN touches no memory of ours.
    unsafe {
        libc::signal(libc::SIGTERM, libc::SIG_IGN);
        libc::signal(libc::SIGINT, libc::SIG_IGN);
    }
}

/// Asks the kernel to kill this process when its parent goes; false if the parent is already gone.
fn die_with_parent() -> bool {
    #[cfg(target_os = "linux")]
    // SAFETY: prctl with PR_SET_PDEATHSIG takes a signal number and touches no memory.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
    }
    match std::env::var(PARENT_PID_VAR).ok().and_then(|p| p.parse::<i32>().ok()) {
        Some(parent) => {
            // SAFETY: getppid has no preconditions.
            let now = unsafe { libc::getppid() };
            now == parent
        }
        None => true,
    }
}

/// Test hooks the worker can set, whether the worker closed our stdin, and the controls of the
/// jobs in hand (cancelled by the worker's `Cancel`; their first tokens reported back once each).
#[derive(Default)]
struct Hooks {
    controls: std::sync::Mutex<std::collections::HashMap<u64, (JobControl, bool)>>,
    #[cfg(feature = "test-hooks")]
    abort: AtomicBool,
    #[cfg(feature = "test-hooks")]
    stall: AtomicBool,
    closed: AtomicBool,
}

impl Hooks {
    fn controls(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<u64, (JobControl, bool)>> {
        self.controls.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn read_jobs(mut stdin: io::Stdin, jobs: mpsc::Sender<Job<u64>>, hooks: &Hooks) {
    loop {
        match read_frame::<ToEngine>(&mut stdin) {
            Ok(Some(ToEngine::Job { id, request })) => {
                let request = request.into_request(Instant::now());
                hooks.controls().insert(id, (request.control.clone(), false));
                if jobs.send(Job { request, reply: id }).is_err() {
                    break;
                }
            }
            Ok(Some(ToEngine::Cancel { id })) => {
                if let Some((control, _)) = hooks.controls().get(&id) {
                    control.cancel();
                }
            }
            Ok(Some(ToEngine::Start(_))) => tracing::warn!("ignoring a second Start frame"),
            #[cfg(feature = "test-hooks")]
            Ok(Some(ToEngine::AbortForTest)) => hooks.abort.store(true, Ordering::Relaxed),
            #[cfg(feature = "test-hooks")]
            Ok(Some(ToEngine::StallForTest)) => hooks.stall.store(true, Ordering::Relaxed),
            Ok(None) => break,
            Err(e) => {
                tracing::error!(error = %e, "unreadable frame from the worker; finishing the work in hand and exiting");
                break;
            }
        }
    }
    hooks.closed.store(true, Ordering::Relaxed);
    // Dropping `jobs` ends the batching loop once the work in hand is answered.
}

struct ChildHost<W: Write> {
    out: W,
    last_stats: Instant,
    hooks: Arc<Hooks>,
}

impl<W: Write> ChildHost<W> {
    /// The worker is gone (its end of the pipe closed): nobody wants the answers.
    fn write(&mut self, frame: &FromEngine, flush: bool) {
        let sent = write_frame(&mut self.out, frame).and_then(|()| if flush { self.out.flush() } else { Ok(()) });
        if let Err(e) = sent {
            tracing::error!(error = %e, "the worker's pipe is gone; exiting");
            std::process::exit(1);
        }
    }
}

impl<W: Write> Host<u64> for ChildHost<W> {
    fn round_starting(&mut self) {}

    fn admitted(&mut self, active: usize) {
        #[cfg(feature = "test-hooks")]
        if active > 0 {
            if self.hooks.abort.load(Ordering::Relaxed) {
                eprintln!("engine child: abort requested by a test, {active} sequence(s) in flight");
                std::process::abort();
            }
            while self.hooks.stall.load(Ordering::Relaxed) && !self.hooks.closed.load(Ordering::Relaxed) {
                // A hung decode, as far as the worker's watchdog can tell.
                thread::park_timeout(std::time::Duration::from_millis(20));
            }
        }
        #[cfg(not(feature = "test-hooks"))]
        let _ = (active, &self.hooks);
    }

    fn stepped(&mut self, stats: StepStats, active: usize, idle: bool, finished: usize) {
        let firsts: Vec<u64> = self
            .hooks
            .controls()
            .iter_mut()
            .filter(|(_, (control, reported))| !*reported && control.has_first_token())
            .map(|(&id, (_, reported))| {
                *reported = true;
                id
            })
            .collect();
        for id in firsts {
            self.write(&FromEngine::FirstToken { id }, true);
        }
        if finished > 0 || idle || self.last_stats.elapsed() >= STATS_EVERY {
            self.last_stats = Instant::now();
            // Answers follow and flush; otherwise flush now so the worker's clock moves.
            self.write(&FromEngine::Stats { steps: stats, active, busy: !idle }, finished == 0);
        }
    }

    fn answer(&mut self, id: u64, result: Result<Generation, BackendError>) {
        self.hooks.controls().remove(&id);
        let result = result.map(|g| WireGeneration::new(g, Instant::now()));
        self.write(&FromEngine::Done { id, result }, true);
    }
}
