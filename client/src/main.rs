//! polaredge-client: the cluster half of POLAREDGE. This cut renders manifests; watching, sending and relaying
//! follow (see the client issue).

use client::{manifests, render};

use std::process::ExitCode;

const USAGE: &str = "usage: polaredge-client render -f DIR

  render -f DIR   render the Ingresses, IngressClasses, Services and EndpointSlices in DIR's YAML files to
                  the Traefik dynamic config the agents would serve, on stdout (no cluster needed)";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["render", "-f", dir] => match manifests::load_dir(std::path::Path::new(dir)) {
            Ok(cluster) => {
                let rendered = render::render(&cluster, &render::Settings::default());
                for notice in &rendered.notices {
                    eprintln!("{}/{}: {}: {}", notice.namespace, notice.name, notice.reason, notice.message);
                }
                print!("{}", rendered.yaml);
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("polaredge-client render: {e}");
                ExitCode::from(1)
            }
        },
        ["--help" | "-h" | "help"] | ["render", "--help"] => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!("{USAGE}");
            ExitCode::from(2)
        }
    }
}
