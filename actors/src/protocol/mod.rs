//! The Loosh "Fiber" wire protocol: the cryptography and the JSON shapes, free of any actor or HTTP.

pub mod fernet_codec;
pub mod messages;
pub mod pyfloat;
pub mod rsa_keys;
pub mod secret;
pub mod signature;
