use std::time::Instant;
fn main() {
    let dir = tempfile::tempdir().unwrap();
    let item = "x".repeat(1024);
    let (mut s, mut c) = (0.0, 0.0);
    for _ in 0..3 {
        let t = Instant::now();
        let (tx, rx) = sump::Builder::new("w2", dir.path()).memory_capacity(1000).open::<String>().unwrap();
        for _ in 0..200_000 {
            tx.send(item.clone()).unwrap();
        }
        let sent = t.elapsed().as_secs_f64();
        drop(tx);
        assert_eq!(rx.iter().count(), 200_000);
        s += t.elapsed().as_secs_f64();
        println!("sump send {:.0} ms total {:.0} ms", sent * 1e3, t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        let (tx, rx) = crossbeam_channel::unbounded::<String>();
        for _ in 0..200_000 {
            tx.send(item.clone()).unwrap();
        }
        drop(tx);
        assert_eq!(rx.iter().count(), 200_000);
        c += t.elapsed().as_secs_f64();
    }
    println!("sump {:.1} ms, crossbeam {:.1} ms, ratio {:.2}", s * 333.3, c * 333.3, s / c);
}
