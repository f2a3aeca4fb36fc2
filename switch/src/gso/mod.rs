//! The GSO/GRO path: superframes cut into wire-ready segments on their way into the tunnel
//! ([`segment`]), and TCP segments from the tunnel merged into superframes on their way to a
//! pod's TAP ([`coalesce`]). Both read and write headers through [`crate::wire`]'s views.

pub mod coalesce;
pub mod segment;

pub use coalesce::{Coalescer, MAX_PARTS};
pub use segment::{complete_checksum, OffloadError, Segmenter};

/// Smallest virtio-net `gso_size` the switch accepts on a superframe (TCP or UDP): Linux's
/// `TCP_MIN_MSS` (88 bytes). A kernel never cuts TCP segments smaller than that, and a
/// UDP GSO sender gains nothing from segments that small; the floor caps what one 64 KiB
/// superframe can become at about 750 packets (a `gso_size` of 1 made 3000 from a 3 KB
/// frame). The pipeline drops superframes below it before they reach any port
/// ([`crate::pipeline::DropReason::BadGsoSize`]); the segmenter refuses them as well.
pub const MIN_GSO_SIZE: u16 = crate::wire::tcp::MIN_MSS;
