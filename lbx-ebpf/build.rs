//! Code generation options for the XDP object, passed to bpf-linker (which generates the
//! code of the whole program at link time).

fn main() {
    // Packet headers sit at any byte offset. Without this, LLVM reads every multi-byte
    // header field of an unaligned type byte by byte and reassembles it with shifts: an
    // IPv6 address is 16 loads. The kernel allows misaligned packet and map-value loads
    // on every architecture with efficient unaligned access, x86-64 and arm64 among them.
    println!("cargo:rustc-link-arg=--cpu-features=+allows-misaligned-mem-access");
}
