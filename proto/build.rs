//! Compiles the Cap'n Proto schemas, then generates the metadata operations
//! from the compiler's output (`build/ops`).

#[path = "build/ops/mod.rs"]
mod ops;

use std::path::PathBuf;

fn main() {
    for path in [
        "schema/fragment.capnp",
        "schema/metadata.capnp",
        "build/ops/mod.rs",
        "build/ops/model.rs",
        "build/ops/emit.rs",
    ] {
        println!("cargo:rerun-if-changed={path}");
    }
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let cgr = out_dir.join("schema.cgr");
    capnpc::CompilerCommand::new()
        .src_prefix("schema")
        .file("schema/fragment.capnp")
        .file("schema/metadata.capnp")
        .raw_code_generator_request_path(&cgr)
        .run()
        .expect("compile Cap'n Proto schemas (is the `capnp` compiler installed? apt-get install capnproto)");
    if let Err(e) = ops::generate(&cgr, &out_dir) {
        panic!("generate the metadata operations from schema/metadata.capnp: {e}");
    }
}
