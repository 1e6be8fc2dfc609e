//! `baton secret …` and `baton config …`: create, list, inspect, remove.
//!
//! A secret's value goes from its source (a file, stdin, or, the weakest, a
//! command-line literal) straight into the request body; it is never
//! printed, and the API never sends it back.

use std::io::Read;
use std::path::PathBuf;

use baton_api::FileInfo;
use baton_spec::{FileKind, MAX_FILE_BYTES, file_name_problem, file_size_problem};
use clap::Subcommand;
use zeroize::Zeroizing;

use crate::Failure;
use crate::cli::{ClientArgs, client};
use crate::output::{Format, format_utc_ms, print_json, print_table};

/// `baton secret` and `baton config` subcommands.
#[derive(Debug, Subcommand)]
pub enum FileCmd {
    /// Store a new one. It never changes: to rotate it, create another
    /// under a new name and update the jobs that use it. At most 500 KiB.
    Create {
        /// Name: letters, digits, '.', '_' or '-' (at most 64).
        name: String,
        /// The value itself. Weakest: it stays in your shell history and is
        /// visible in `ps` while the command runs; prefer --from-file or `-`.
        #[arg(long, value_name = "VALUE", conflicts_with_all = ["from_file", "stdin"])]
        from_literal: Option<String>,
        /// Read the value from this file.
        #[arg(long, value_name = "FILE", conflicts_with = "stdin")]
        from_file: Option<PathBuf>,
        /// `-`: read the value from standard input.
        #[arg(value_name = "-", value_parser = ["-"])]
        stdin: Option<String>,
    },
    /// List them, with the jobs using each.
    Ls {
        /// Output format.
        #[arg(short, long, value_enum, default_value_t)]
        output: Format,
    },
    /// Show one (a secret's value is never shown; a config's contents are).
    Inspect {
        /// Name.
        name: String,
        /// Output format.
        #[arg(short, long, value_enum, default_value_t)]
        output: Format,
    },
    /// Remove one. Refused while a job uses it.
    Rm {
        /// Name.
        name: String,
    },
}

fn collection(kind: FileKind) -> &'static str {
    match kind {
        FileKind::Secret => "secrets",
        FileKind::Config => "configs",
    }
}

fn checked_name(kind: FileKind, name: &str) -> Result<(), Failure> {
    match file_name_problem(name) {
        Some(problem) => Err(Failure::usage(format!("{kind} name {name:?} {problem}"))),
        None => Ok(()),
    }
}

/// Reads at most one byte more than the limit, so a larger value is
/// reported without reading all of it.
fn read_limited(reader: impl Read, from: &str) -> Result<Zeroizing<Vec<u8>>, Failure> {
    let mut value = Zeroizing::new(Vec::new());
    reader
        .take(MAX_FILE_BYTES as u64 + 1)
        .read_to_end(&mut value)
        .map_err(|e| Failure::op(format!("cannot read {from}: {e}")))?;
    Ok(value)
}

fn value(
    kind: FileKind,
    from_literal: Option<String>,
    from_file: Option<PathBuf>,
    stdin: bool,
) -> Result<Zeroizing<Vec<u8>>, Failure> {
    match (from_literal, from_file, stdin) {
        (Some(literal), None, false) => Ok(Zeroizing::new(literal.into_bytes())),
        (None, Some(path), false) => {
            let file = std::fs::File::open(&path)
                .map_err(|e| Failure::op(format!("cannot open {}: {e}", path.display())))?;
            read_limited(file, &path.display().to_string())
        }
        (None, None, true) => read_limited(std::io::stdin().lock(), "standard input"),
        _ => Err(Failure::usage(format!(
            "give the {kind}'s value with one of --from-literal VALUE, --from-file FILE, or - \
             (standard input)"
        ))),
    }
}

fn print_info(info: &FileInfo) {
    println!("name:     {}", info.name);
    println!("kind:     {}", info.kind);
    println!("size:     {} bytes", info.size);
    println!("created:  {} UTC", format_utc_ms(info.created_at));
    println!(
        "used by:  {}",
        if info.used_by.is_empty() {
            "-".to_owned()
        } else {
            info.used_by.join(", ")
        }
    );
    let Some(data) = &info.data else {
        return;
    };
    use base64::Engine;
    match base64::engine::general_purpose::STANDARD
        .decode(data)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
    {
        Some(text) => {
            println!("data:");
            print!("{text}");
            if !text.ends_with('\n') {
                println!();
            }
        }
        None => println!("data:     (binary; base64 with -o json)"),
    }
}

/// Runs `baton secret …` (`kind` secret) or `baton config …`.
pub async fn run(client_args: ClientArgs, kind: FileKind, cmd: FileCmd) -> Result<(), Failure> {
    let collection = collection(kind);
    match cmd {
        FileCmd::Create {
            name,
            from_literal,
            from_file,
            stdin,
        } => {
            checked_name(kind, &name)?;
            let value = value(kind, from_literal, from_file, stdin.is_some())?;
            if let Some(problem) = file_size_problem(value.len()) {
                return Err(Failure::usage(format!("{kind} {name:?} {problem}")));
            }
            let created = client(client_args)?
                .create_file(collection, &name, value.to_vec())
                .await?;
            println!("{kind} {} created ({} bytes)", created.name, created.size);
            Ok(())
        }
        FileCmd::Ls { output } => {
            let files = client(client_args)?.list_files(collection).await?;
            match output {
                Format::Json => print_json(&files),
                Format::Table => print_table(
                    &["NAME", "SIZE", "CREATED", "USED BY"],
                    files
                        .iter()
                        .map(|f| {
                            vec![
                                f.name.clone(),
                                f.size.to_string(),
                                format_utc_ms(f.created_at),
                                if f.used_by.is_empty() {
                                    "-".to_owned()
                                } else {
                                    f.used_by.join(",")
                                },
                            ]
                        })
                        .collect(),
                ),
            }
            Ok(())
        }
        FileCmd::Inspect { name, output } => {
            checked_name(kind, &name)?;
            let info = client(client_args)?.get_file(collection, &name).await?;
            match output {
                Format::Json => print_json(&info),
                Format::Table => print_info(&info),
            }
            Ok(())
        }
        FileCmd::Rm { name } => {
            checked_name(kind, &name)?;
            let removed = client(client_args)?.remove_file(collection, &name).await?;
            println!("{kind} {} removed", removed.name);
            Ok(())
        }
    }
}
