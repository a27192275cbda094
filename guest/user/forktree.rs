//! forktree: a tree of processes by fork. Each node forks `arg` children
//! levels deep, two per node, waits for all of them, and exits with the
//! number of nodes in its subtree, so the root learns the tree's size
//! through exit statuses alone. Each node names itself by its path
//! (`0`, `0.1`, `0.1.2`), never by pid, so the output is the same
//! whatever order the scheduler picks.
#![no_std]
#![no_main]

mod ulib;

/// A node's name: its path from the root, built in memory every child
/// inherits copy-on-write from its parent and then changes.
struct Path {
    bytes: [u8; 32],
    len: usize,
}

impl Path {
    fn as_str(&self) -> &str {
        core::str::from_utf8(&self.bytes[..self.len]).unwrap_or("?")
    }

    fn push(&mut self, digit: u8) {
        self.bytes[self.len] = b'.';
        self.bytes[self.len + 1] = b'0' + digit;
        self.len += 2;
    }
}

fn main(depth: u64) -> u64 {
    let mut path = Path { bytes: [0; 32], len: 1 };
    path.bytes[0] = b'0';
    let mut level = depth;
    loop {
        println!("node {} at depth {}", path.as_str(), depth - level);
        if level == 0 {
            return 1;
        }
        let mut children = 0;
        let mut forked_child = false;
        for child in 1..=2u8 {
            if ulib::fork() == 0 {
                path.push(child);
                forked_child = true;
                break;
            }
            children += 1;
        }
        if forked_child {
            level -= 1;
            continue;
        }
        let mut nodes = 1;
        for _ in 0..children {
            match ulib::wait() {
                Some((_, status)) => nodes += status,
                None => return 99,
            }
        }
        println!("node {} saw {} nodes below and including it", path.as_str(), nodes);
        return nodes;
    }
}
