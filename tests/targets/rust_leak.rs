//! Rust ground truth: the default (System) global allocator, i.e. glibc's malloc family.
//!
//!   leak   rust_leak_boxes: 20 x Box<[u8; 512]> and one Vec::with_capacity(3000), kept:
//!          13240 live in 21 blocks
//!   churn  rust_churn: a Vec grown by pushes and a String, dropped: 0 live
//!   string rust_leak_string: a 300-byte String, kept: 300 live in 1 block
use std::io::{BufRead, Write};

#[inline(never)]
fn rust_leak_boxes(kept: &mut Vec<Box<[u8]>>) {
    for i in 0..20 {
        kept.push(std::hint::black_box(Box::new([i as u8; 512])));
    }
    let mut vec: Vec<u8> = Vec::with_capacity(3000);
    vec.push(1);
    std::mem::forget(std::hint::black_box(vec));
}

#[inline(never)]
fn rust_leak_string() {
    let text = "memmon".repeat(50);
    std::mem::forget(std::hint::black_box(text));
}

#[inline(never)]
fn rust_churn() {
    let mut numbers = Vec::new();
    for i in 0..1000u32 {
        numbers.push(i);
    }
    let text = "x".repeat(100);
    std::hint::black_box((numbers, text));
}

fn main() {
    // Room for the kept boxes up front, so that growing this Vec is not part of a phase.
    let mut kept: Vec<Box<[u8]>> = Vec::with_capacity(64);
    let stdin = std::io::stdin();
    let mut stdout = std::io::stdout();
    let mut line = String::with_capacity(64);
    writeln!(stdout, "ready").unwrap();
    stdout.flush().unwrap();
    let mut input = stdin.lock();
    loop {
        line.clear();
        if input.read_line(&mut line).unwrap() == 0 {
            return;
        }
        match line.trim() {
            "leak" => rust_leak_boxes(&mut kept),
            "churn" => rust_churn(),
            "string" => rust_leak_string(),
            "exit" => return,
            _ => {}
        }
        writeln!(stdout, "done {}", line.trim()).unwrap();
        stdout.flush().unwrap();
    }
}
