//! Fixture repositories for the training tests, written into temporary directories.

#![allow(dead_code)]

use std::path::Path;

use foresight::train::{ModelInit, RunLength, TrainOptions};

/// Options of a tiny from-scratch run (preset tiny, 2 heads, 4 x 48 tokens per step) on `repo`.
pub fn tiny_options(repo: &Path, out: &Path, steps: u64) -> TrainOptions {
    let mut o = TrainOptions::new(
        vec![repo.to_path_buf()],
        out.to_path_buf(),
        ModelInit::Scratch {
            config: "tiny".into(),
            heads: Some(2),
        },
    );
    o.seq_len = 48;
    o.batch_size = 4;
    o.length = RunLength::Steps(steps);
    o.lr = 3e-3;
    o.warmup_steps = Some(3);
    o.eval_every = 10;
    o.checkpoint_every = 4;
    o.eval_batches = 2;
    o.valid_fraction = 0.2;
    o.seed = 5;
    o
}

pub fn write(root: &Path, rel: &str, bytes: impl AsRef<[u8]>) {
    let path = root.join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

/// A small repository of regular Rust and Python code, `n` files of a few hundred bytes each.
pub fn code_repo(root: &Path, n: usize) {
    for i in 0..n {
        let rs = format!(
            "/// Adds {i} to every value.\npub fn add_{i}(values: &mut [u32]) {{\n    for v in values.iter_mut() {{\n        *v += {i};\n    }}\n}}\n\n\
             #[cfg(test)]\nmod tests {{\n    use super::*;\n\n    #[test]\n    fn adds() {{\n        let mut v = vec![1, 2, 3];\n        add_{i}(&mut v);\n        assert_eq!(v, vec![1 + {i}, 2 + {i}, 3 + {i}]);\n    }}\n}}\n"
        );
        write(root, &format!("src/module_{i}.rs"), rs);
        if i % 2 == 0 {
            let py = format!("def scale_{i}(xs):\n    \"\"\"Multiply every item by {i}.\"\"\"\n    return [x * {i} for x in xs]\n\n\nif __name__ == \"__main__\":\n    print(scale_{i}([1, 2, 3]))\n");
            write(root, &format!("py/scale_{i}.py"), py);
        }
    }
}
