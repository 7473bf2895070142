// Compiles proto/ with protox (pure Rust, no system protoc). gRPC stubs only with the
// `grpc` feature so that crates needing just the messages stay free of tonic.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "pleura/v1/pleura.proto";
    println!("cargo:rerun-if-changed={proto}");
    let fds = protox::compile([proto], ["."])?;
    let grpc = std::env::var_os("CARGO_FEATURE_GRPC").is_some();
    tonic_prost_build::configure()
        .build_client(grpc)
        .build_server(grpc)
        .compile_fds(fds)?;
    Ok(())
}
