//! edgepipe-sim
