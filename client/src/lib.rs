//! polaredge-client, the cluster half of POLAREDGE, as a library (the binary is a thin CLI over it).
//!
//! Module map: [`render`] (Ingress semantics -> Traefik routes; pure), [`manifests`] (YAML files as renderer
//! input, for `render -f DIR` and tests).

pub mod manifests;
pub mod render;
