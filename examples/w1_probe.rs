use std::thread;
use std::time::Instant;
fn main() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, mut c) = (0.0, 0.0);
    for _ in 0..10 {
        let t = Instant::now();
        let (tx, rx) = sump::Builder::new("w1", dir.path()).memory_capacity(1 << 20).open::<u64>().unwrap();
        let producer = thread::spawn(move || (0..1_000_000u64).for_each(|i| tx.send(i).unwrap()));
        assert_eq!(rx.iter().count(), 1_000_000);
        producer.join().unwrap();
        s += t.elapsed().as_secs_f64();
        let t = Instant::now();
        let (tx, rx) = crossbeam_channel::bounded::<u64>(1 << 20);
        let producer = thread::spawn(move || (0..1_000_000u64).for_each(|i| tx.send(i).unwrap()));
        assert_eq!(rx.iter().count(), 1_000_000);
        producer.join().unwrap();
        c += t.elapsed().as_secs_f64();
    }
    println!("sump {:.1} ms, crossbeam {:.1} ms, ratio {:.2}", s * 100.0, c * 100.0, s / c);
}
