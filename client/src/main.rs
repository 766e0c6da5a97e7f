//! polaredge-client: the cluster half of POLAREDGE. This first cut only proves the workspace builds; watching,
//! rendering, sending and relaying arrive with their own issue.

fn main() {
    println!("polaredge-client {}: not implemented yet (see the client issue)", env!("CARGO_PKG_VERSION"));
}
