// libtorch's CUDA library is only reached through libtorch's own initialisers, so the
// linker's --as-needed would drop it and hide every GPU; keep it, and libtorch, linked
// into `mirador`. `mirador-coordinator` links no libtorch at all.
fn main() {
    println!("cargo:rustc-link-arg-bin=mirador=-Wl,--no-as-needed");
    println!("cargo:rustc-link-arg-bin=mirador=-ltorch");
}
