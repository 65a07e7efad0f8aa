//! edgepipe-server
