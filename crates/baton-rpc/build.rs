//! Generates the protobuf messages and tonic services from `proto/baton.proto`
//! with protox (a pure-Rust protobuf compiler), so no system `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/baton.proto");
    let descriptors = protox::compile(["proto/baton.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // The join token and secrets' values are secret: the Debug of the
        // messages that carry them is written by hand.
        .skip_debug(["baton.v1.JoinRequest", "baton.v1.FileData"])
        .compile_fds(descriptors)?;
    Ok(())
}
