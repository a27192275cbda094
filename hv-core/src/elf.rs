//! placeholder: the ELF loader
