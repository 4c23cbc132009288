use varlora::noise::PhiloxNormal;
fn main() {
    let n = 10_000_000;
    let mut z = vec![0f32; n];
    let mut g = PhiloxNormal::new(1);
    let t = std::time::Instant::now();
    for _ in 0..5 {
        g.fill(&mut z);
    }
    println!(
        "gen {:.2} ns/elem {}",
        t.elapsed().as_secs_f64() * 1e9 / (5 * n) as f64,
        z[12345]
    );
}
