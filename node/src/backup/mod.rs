//! Backups: the snapshot file format (`esf snapshot save` writes it, `esf
//! snapshot restore` reads it: [`file`]) and serving one from a running
//! cluster ([`serve`]).

pub mod file;
pub mod serve;
