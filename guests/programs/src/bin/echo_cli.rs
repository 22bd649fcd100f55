//! WASI capability probe: each subcommand exercises one capability (args, env,
//! filesystem, stdio, exit codes) so host tests can check what a sandbox grants.
//!
//! Exit codes: 0 ok, 1 I/O error (`error: ...` on stderr), 2 usage,
//! 3 `env-get` of an unset variable, or whatever `exit N` asks for.

use std::io::{self, Write};
use std::process::ExitCode;
use std::{env, fs};

const USAGE: &str = "\
usage: echo_cli <command>
  args [ARG...]      print each ARG on its own line
  env                print all environment variables as KEY=VALUE, sorted
  env-get KEY        print the value of KEY (exit 3 if unset)
  cat PATH           print the contents of a file
  write PATH TEXT    create/truncate PATH and write TEXT to it
  rm PATH            remove a file, or a directory and all it holds
  ls PATH            print the sorted entry names of a directory
  stdin              copy stdin to stdout
  exit N             exit with code N";

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();

    let result = match args.as_slice() {
        ["args", rest @ ..] => print_lines(rest.iter()),
        ["env"] => print_env(),
        ["env-get", key] => match env::var_os(key) {
            Some(value) => print_lines([value.to_string_lossy()].iter()),
            None => {
                eprintln!("missing: {key}");
                return ExitCode::from(3);
            }
        },
        ["cat", path] => fs::read(path).and_then(|bytes| write_stdout(&bytes)),
        ["write", path, text] => fs::write(path, text),
        ["rm", path] => match fs::symlink_metadata(path) {
            Ok(meta) if meta.is_dir() => fs::remove_dir_all(path),
            _ => fs::remove_file(path),
        },
        ["ls", path] => list_dir(path),
        ["stdin"] => copy_stdin(),
        ["exit", code] => match code.parse::<i32>() {
            Ok(code) => std::process::exit(code),
            Err(_) => return usage(),
        },
        _ => return usage(),
    };

    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::from(1)
        }
    }
}

fn usage() -> ExitCode {
    eprintln!("{USAGE}");
    ExitCode::from(2)
}

/// Prints each item on its own line, then flushes.
fn print_lines<T: std::fmt::Display>(items: impl Iterator<Item = T>) -> io::Result<()> {
    let mut out = io::stdout().lock();
    for item in items {
        writeln!(out, "{item}")?;
    }
    out.flush()
}

fn write_stdout(bytes: &[u8]) -> io::Result<()> {
    let mut out = io::stdout().lock();
    out.write_all(bytes)?;
    out.flush()
}

fn print_env() -> io::Result<()> {
    let mut vars: Vec<(String, String)> = env::vars_os()
        .map(|(k, v)| {
            (
                k.to_string_lossy().into_owned(),
                v.to_string_lossy().into_owned(),
            )
        })
        .collect();
    vars.sort();
    print_lines(vars.iter().map(|(k, v)| format!("{k}={v}")))
}

fn list_dir(path: &str) -> io::Result<()> {
    let mut names = fs::read_dir(path)?
        .map(|entry| Ok(entry?.file_name().to_string_lossy().into_owned()))
        .collect::<io::Result<Vec<String>>>()?;
    names.sort();
    print_lines(names.iter())
}

fn copy_stdin() -> io::Result<()> {
    let mut out = io::stdout().lock();
    io::copy(&mut io::stdin().lock(), &mut out)?;
    out.flush()
}
