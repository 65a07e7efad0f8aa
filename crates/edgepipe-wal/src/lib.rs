//! edgepipe-wal
