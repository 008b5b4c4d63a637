fn main() {
    for schema in ["schema/fragment.capnp", "schema/metadata.capnp"] {
        println!("cargo:rerun-if-changed={schema}");
    }
    capnpc::CompilerCommand::new()
        .src_prefix("schema")
        .file("schema/fragment.capnp")
        .file("schema/metadata.capnp")
        .run()
        .expect("compile Cap'n Proto schemas (is the `capnp` compiler installed? apt-get install capnproto)");
}
