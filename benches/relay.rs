//! The relay's benchmark (issue 5): the relay against direct connections and
//! its peers. Work in progress.

fn main() {
    println!("benchmark not written yet");
}
