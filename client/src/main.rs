//! polaredge-client: the cluster half of POLAREDGE. `run` watches the cluster (or a folder of manifests),
//! uploads the routes to every agent and relays the connections they send back to the pods; `render` prints
//! the routes for a folder of manifests. The work is in the `client` library; this file parses the command.

use client::{config, manifests, render, run};

use std::process::ExitCode;

const USAGE: &str = "usage: polaredge-client render -f DIR | run [--config FILE [--manifests DIR]]

  render -f DIR   render the Ingresses, IngressClasses, Services and EndpointSlices in DIR's YAML files to
                  the Traefik dynamic config the agents would serve, on stdout (no cluster needed)
  run             as below, one agent configured from POLAREDGE_* environment variables (the Deployment)
  run --config FILE
                  watch the cluster (in-cluster service account, or KUBECONFIG), keep the agents in FILE
                  serving its Ingresses, and relay their traffic to the endpoints
  run --config FILE --manifests DIR
                  the same from DIR's manifests (re-read on change) instead of a cluster";

fn main() -> ExitCode {
    protocol::logging::init("polaredge-client");
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["render", "-f", dir] => match manifests::load_dir(std::path::Path::new(dir)) {
            Ok(cluster) => {
                let rendered = render::render(&cluster, &render::Settings::default());
                for notice in &rendered.notices {
                    eprintln!("{}/{}: {}: {}", notice.namespace, notice.name, notice.reason, notice.message);
                }
                // Pretty for people; the agents get the compact form (same content).
                println!("{}", serde_json::to_string_pretty(&rendered.config()).expect("serializable"));
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("polaredge-client render: {e}");
                ExitCode::from(1)
            }
        },
        ["run", "--config", file, "--manifests", dir] => {
            let result = config::load(std::path::Path::new(file))
                .and_then(|c| run::run(c, run::Source::Manifests(std::path::PathBuf::from(dir))));
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("polaredge-client run: {e}");
                    ExitCode::from(1)
                }
            }
        }
        ["run", "--config", file] => {
            match config::load(std::path::Path::new(file)).and_then(|c| run::run(c, run::Source::Kubernetes)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("polaredge-client run: {e}");
                    ExitCode::from(1)
                }
            }
        }
        ["run"] => match config::from_env().and_then(|c| run::run(c, run::Source::Kubernetes)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("polaredge-client run: {e}");
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
