use std::thread;
use std::time::Instant;
fn main() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, mut c) = (0.0, 0.0);
    for _ in 0..5 {
        let t = Instant::now();
        let (tx, rx) = sump::Builder::new("w3", dir.path()).memory_capacity(1000).open::<[u64; 8]>().unwrap();
        let ps: Vec<_> = (0..4)
            .map(|_| {
                let tx = tx.clone();
                thread::spawn(move || (0..250_000).for_each(|_| tx.send([1u64; 8]).unwrap()))
            })
            .collect();
        drop(tx);
        assert_eq!(rx.iter().count(), 1_000_000);
        ps.into_iter().for_each(|p| p.join().unwrap());
        let st = rx.stats();
        s += t.elapsed().as_secs_f64();
        println!("sump {:.0} ms spilled {}", t.elapsed().as_secs_f64() * 1e3, st.spilled);
        let t = Instant::now();
        let (tx, rx) = crossbeam_channel::bounded::<[u64; 8]>(1000);
        let ps: Vec<_> = (0..4)
            .map(|_| {
                let tx = tx.clone();
                thread::spawn(move || (0..250_000).for_each(|_| tx.send([1u64; 8]).unwrap()))
            })
            .collect();
        drop(tx);
        assert_eq!(rx.iter().count(), 1_000_000);
        ps.into_iter().for_each(|p| p.join().unwrap());
        c += t.elapsed().as_secs_f64();
    }
    println!("sump {:.1} ms, crossbeam {:.1} ms, ratio {:.2}", s * 200.0, c * 200.0, s / c);
}
