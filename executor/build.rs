// libtorch's CUDA library is only reached through libtorch's own initialisers, so the
// linker's --as-needed would drop it and hide every GPU; keep it, and libtorch, linked.
fn main() {
    println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
    println!("cargo:rustc-link-arg=-ltorch");
}
