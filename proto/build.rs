fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // Every .proto of proto/proto, in a fixed order.
    let mut protos: Vec<String> = std::fs::read_dir("proto")?
        .map(|entry| entry.map(|e| e.path().display().to_string()))
        .collect::<Result<_, _>>()?;
    protos.retain(|p| p.ends_with(".proto"));
    protos.sort();
    println!("cargo:rerun-if-changed=proto");
    for proto in &protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc);
    tonic_prost_build::configure()
        .file_descriptor_set_path(
            std::path::PathBuf::from(std::env::var("OUT_DIR")?).join("mirador_descriptor.bin"),
        )
        .compile_with_config(config, &protos, &["proto".to_string()])?;
    Ok(())
}
