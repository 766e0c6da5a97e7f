//! polaredge-agent: the edge half of POLAREDGE. This first cut only handles keys; the upload API, Traefik
//! supervision and forwarders arrive with their own issue.

mod dynamic;

use std::io::Read;
use std::process::ExitCode;

const USAGE: &str = "usage: polaredge-agent <command>

commands:
  genkey    print a new WireGuard private key (like `wg genkey`)
  pubkey    read a private key on stdin, print its public key (like `wg pubkey`)
  --help    this text";

fn main() -> ExitCode {
    let command = std::env::args().nth(1).unwrap_or_default();
    match command.as_str() {
        "genkey" => println!("{}", tunnel::PrivateKey::generate()),
        "pubkey" => {
            let mut text = String::new();
            if let Err(e) = std::io::stdin().read_to_string(&mut text) {
                eprintln!("polaredge-agent pubkey: cannot read stdin: {e}");
                return ExitCode::from(1);
            }
            match text.parse::<tunnel::PrivateKey>() {
                Ok(key) => println!("{}", key.public_key()),
                Err(e) => {
                    eprintln!("polaredge-agent pubkey: {e}");
                    return ExitCode::from(1);
                }
            }
        }
        "--help" | "-h" | "help" => println!("{USAGE}"),
        other => {
            eprintln!("polaredge-agent: unknown command {other:?}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    }
    ExitCode::SUCCESS
}
