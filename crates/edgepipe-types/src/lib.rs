//! edgepipe-types
