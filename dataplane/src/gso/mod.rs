//! The GSO/GRO path: superframes cut into wire-ready segments on their way into the tunnel
//! (`segment`), and TCP segments from the tunnel merged into superframes on their way to a
//! pod's TAP (`coalesce`). Both read and write headers through [`crate::wire`]'s views.

mod coalesce;
mod segment;

pub use coalesce::Coalescer;
pub use coalesce::MAX_PARTS;
pub use segment::{complete_checksum, complete_partial_checksum};
pub use segment::{OffloadError, Segmenter};

/// Smallest virtio-net `gso_size` the switch accepts on a superframe (TCP or UDP): Linux's
/// `TCP_MIN_GSO_SIZE`, 8 bytes, the least payload per segment its TCP sends (a send MSS of at
/// least 48 bytes, less up to 40 bytes of options). Smaller sizes come from no real sender and
/// only multiply packets (a `gso_size` of 1 made 3000 tunnel packets of a 3 KB frame). The
/// pipeline drops such superframes before they reach any port
/// (the pipeline's `bad_gso_size` drop); the segmenter refuses them as well. A higher
/// floor would refuse real flows: a peer may advertise a small MSS, and pod MTUs go down to 68.
pub const MIN_GSO_SIZE: u16 = crate::wire::tcp::MIN_GSO_SIZE;
