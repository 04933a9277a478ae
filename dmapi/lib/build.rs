//! The C library's soname: programs linked against libdmapi.so record
//! libdmapi.so.1, the name scripts/install-dmapi.sh gives it.
fn main() {
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libdmapi.so.1");
}
