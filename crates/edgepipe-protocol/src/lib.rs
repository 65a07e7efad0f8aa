//! edgepipe-protocol
