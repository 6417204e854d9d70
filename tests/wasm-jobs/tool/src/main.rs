//! A WASI command for the Wasm job tests: `tool.wasm <verb> [args...]` does
//! one thing a job might do (or a hostile one might try), and prints what
//! happened so that a test can read it from the job's log.

use std::io::{Read, Write};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let verb = args.get(1).map(String::as_str).unwrap_or("");
    let rest = &args[2.min(args.len())..];
    match verb {
        // Every argument on its own line, the program name first.
        "args" => {
            for arg in &args {
                println!("arg: {arg}");
            }
        }
        // Each named variable's value.
        "env" => {
            for name in rest {
                match std::env::var(name) {
                    Ok(value) => println!("{name}={value}"),
                    Err(_) => println!("{name} is not set"),
                }
            }
        }
        "stderr" => eprintln!("{}", rest.join(" ")),
        "exit" => std::process::exit(rest[0].parse().expect("an exit code")),
        // A file's text, or why it could not be read.
        "cat" => {
            for path in rest {
                match std::fs::read_to_string(path) {
                    Ok(text) => print!("{text}"),
                    Err(e) => println!("cannot read {path}: {e}"),
                }
            }
        }
        // write PATH TEXT
        "write" => match std::fs::write(&rest[0], &rest[1]) {
            Ok(()) => println!("wrote {}", rest[0]),
            Err(e) => {
                println!("cannot write {}: {e}", rest[0]);
                std::process::exit(3);
            }
        },
        // Files of a directory, sorted.
        "ls" => match std::fs::read_dir(&rest[0]) {
            Ok(entries) => {
                let mut names: Vec<String> = entries
                    .flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect();
                names.sort();
                println!("ls {}: {}", rest[0], names.join(" "));
            }
            Err(e) => println!("cannot list {}: {e}", rest[0]),
        },
        // Reads standard input (there is none): prints how many bytes.
        "stdin" => {
            let mut input = Vec::new();
            let read = std::io::stdin().read_to_end(&mut input);
            println!("stdin: {} bytes ({read:?})", input.len());
        }
        "sleep" => {
            let seconds: f64 = rest[0].parse().expect("seconds");
            std::thread::sleep(std::time::Duration::from_secs_f64(seconds));
            println!("slept");
        }
        // An infinite loop that the optimiser cannot remove.
        "spin" => {
            let mut x: u64 = 1;
            loop {
                x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
            }
        }
        // Grows memory a mebibyte at a time until something stops it.
        "alloc" => {
            let mut blocks: Vec<Vec<u8>> = Vec::new();
            loop {
                blocks.push(vec![1u8; 1024 * 1024]);
                std::hint::black_box(&blocks);
            }
        }
        // flood BYTES [LINE]: that many bytes of lines of LINE bytes (1 KiB by
        // default; 0 for one line without a newline).
        "flood" => {
            let total: u64 = rest[0].parse().expect("bytes");
            let line: usize = rest
                .get(1)
                .map_or(1024, |l| l.parse().expect("line length"));
            let mut chunk = vec![b'x'; 64 * 1024];
            if line > 0 {
                for (i, byte) in chunk.iter_mut().enumerate() {
                    if i % line == line - 1 {
                        *byte = b'\n';
                    }
                }
            }
            let mut out = std::io::stdout().lock();
            let mut written = 0u64;
            while written < total {
                let n = chunk.len().min((total - written) as usize);
                if out.write_all(&chunk[..n]).is_err() {
                    break;
                }
                written += n as u64;
            }
        }
        // Tries to reach a file outside the preopened directories.
        "escape" => {
            for path in rest {
                match std::fs::read(path) {
                    Ok(bytes) => println!("ESCAPED: read {} bytes of {path}", bytes.len()),
                    Err(e) => println!("refused {path}: {e}"),
                }
            }
        }
        _ => {
            eprintln!(
                "usage: tool.wasm args|env|stderr|exit|cat|write|ls|stdin|sleep|spin|alloc|flood|escape ..."
            );
            std::process::exit(2);
        }
    }
}
