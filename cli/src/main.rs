//! The `isola` command: a thin layer over the `isola` library.
//!
//! Exit codes (also in `isola --help`; see [`exit`] for each):
//!
//! | code | meaning |
//! |---|---|
//! | 0..=255 | the guest's own exit code, passed through |
//! | 1 | also: the guest's exit status did not fit 0-255 (stderr says which it was) |
//! | 2 | usage or input error (bad flag, missing or invalid Wasm, ...) |
//! | 124 | the task hit a limit (memory, fuel, timeout, output) |
//! | 125 | Isola itself failed |
//! | 129, 130, 143 | cancelled by SIGHUP, SIGINT (Ctrl-C), SIGTERM: 128 + the signal |
//! | 134 | the guest trapped |
//! | 137 | a process task's worker crashed |
//! | 141 | Isola's stdout was closed (128 + SIGPIPE), or the guest wrote on to a closed stream |
//!
//! Isola never panics on its own output: a closed stdout or stderr is a
//! reader that went away, not an error to report (there is nobody to read
//! it).

/// `eprintln!` that never panics: a line on stderr, or nothing if stderr is
/// closed (`eprintln!` would panic, and the panic would have nowhere to go).
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

mod commands;
mod exit;
mod signals;

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

/// Run WebAssembly programs as sandboxed tasks.
#[derive(Parser)]
#[command(name = "isola", version, after_help = exit::HELP)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    Run(commands::run::RunCommand),
    Call(commands::call::CallCommand),
    Check(commands::check::CheckCommand),
    Up(commands::up::UpCommand),
    Worker(commands::worker::WorkerCommand),
}

/// The system allocator, except that a worker process whose allocation its
/// memory limit refuses exits with a status its parent reports as that
/// limit, rather than aborting as a crash.
#[global_allocator]
static ALLOCATOR: isola::worker::Allocator = isola::worker::Allocator;

fn main() -> ExitCode {
    install_panic_hook();
    // A process task's worker: this binary, started by a parent Isola.
    if let Some(code) = isola::worker::run_if_worker() {
        return code;
    }
    init_logging();
    let cli = match Cli::command()
        .try_get_matches()
        .and_then(|m| Cli::from_arg_matches(&m))
    {
        Ok(cli) => cli,
        Err(err) => {
            let code = if err.use_stderr() {
                exit::USAGE
            } else {
                exit::SUCCESS
            };
            let _ = err.print();
            return ExitCode::from(code);
        }
    };
    // One task (`run`, `call`, `check`) needs no worker threads: starting
    // them would be most of a short run's own cost.
    let runtime = match &cli.command {
        Command::Up(_) | Command::Worker(_) => tokio::runtime::Builder::new_multi_thread(),
        _ => tokio::runtime::Builder::new_current_thread(),
    }
    .enable_all()
    // Timers, signals and I/O at every poll: a guest yields once per epoch
    // tick, and with the default (every 61 polls) a timeout or Ctrl-C would
    // wait out 61 ticks of long host calls.
    .event_interval(1)
    .build();
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(err) => {
            say!("error: cannot start the async runtime: {err}");
            return ExitCode::from(exit::INTERNAL);
        }
    };
    let many_tasks = matches!(cli.command, Command::Up(_) | Command::Worker(_));
    let code = runtime.block_on(async {
        match cli.command {
            Command::Run(cmd) => cmd.execute().await,
            Command::Call(cmd) => cmd.execute().await,
            Command::Check(cmd) => cmd.execute().await,
            Command::Up(cmd) => cmd.execute().await,
            Command::Worker(cmd) => cmd.execute().await,
        }
    });
    if many_tasks {
        // `up` may leave runtime tasks that hold worker processes (a pool
        // refill under way, a background reap). Dropping such a task kills
        // and reaps its workers, but only if the runtime drops it before
        // we exit: otherwise the workers die with us and stay zombies of
        // PID 1. So wait for that, within a bound (a thread guest stuck in
        // a blocking call would otherwise hold us forever).
        runtime.shutdown_timeout(UP_SHUTDOWN_BOUND);
    } else {
        // One task, already reaped if it had a worker. Guests may still
        // hold blocking reads of our stdin; do not wait for them.
        runtime.shutdown_background();
    }
    ExitCode::from(code)
}

/// How long `isola up` waits at exit for the runtime to drop what is left
/// (reaping any worker process it holds), beyond the one second a worker
/// can take to die after SIGKILL.
const UP_SHUTDOWN_BOUND: std::time::Duration = std::time::Duration::from_secs(2);

/// Users see one line for an internal bug, never a Rust backtrace.
fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        say!("error: internal error in isola: {info}");
        say!("(this is a bug in Isola, please report it)");
        std::process::exit(i32::from(exit::INTERNAL));
    }));
}

fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let Ok(filter) = EnvFilter::try_from_env("ISOLA_LOG") else {
        return;
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verify_cli() {
        Cli::command().debug_assert();
    }
}
