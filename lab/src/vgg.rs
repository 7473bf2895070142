//! The benchmark baseline: the VGG-style network proposed for Raspberry Pi LUS screening
//! (Rojas-Azabache et al. 2021): 2×C64-MP-2×C128-MP-3×C256-MP-3×C512-MP-3×C512-MP-FC on a
//! 224×224 grayscale frame, with seeded random weights. Built as an ONNX graph in memory
//! so the benchmark needs no 60 MB file and no Python.

use prost::Message;
use tract_onnx::pb::{
    attribute_proto::AttributeType, tensor_proto::DataType,
    tensor_shape_proto::dimension::Value as Dim, tensor_shape_proto::Dimension, type_proto,
    AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto,
    TensorShapeProto, TypeProto, ValueInfoProto,
};

pub const VGG_INPUT: usize = 224;
const BLOCKS: [(usize, usize); 5] = [(2, 64), (2, 128), (3, 256), (3, 512), (3, 512)];
const HIDDEN: usize = 64;
const CLASSES: usize = 2;

struct Rng(u64);
impl Rng {
    fn next_f32(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }
}

fn tensor(name: &str, dims: &[usize], rng: &mut Rng, scale: f32) -> TensorProto {
    let n: usize = dims.iter().product();
    let mut raw = Vec::with_capacity(n * 4);
    for _ in 0..n {
        raw.extend_from_slice(&(rng.next_f32() * scale).to_le_bytes());
    }
    TensorProto {
        name: name.into(),
        dims: dims.iter().map(|&d| d as i64).collect(),
        data_type: DataType::Float as i32,
        raw_data: raw,
        ..Default::default()
    }
}

fn ints(name: &str, v: &[i64]) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::Ints as i32,
        ints: v.to_vec(),
        ..Default::default()
    }
}

fn node(op: &str, inputs: &[&str], output: &str, attrs: Vec<AttributeProto>) -> NodeProto {
    NodeProto {
        op_type: op.into(),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.into()],
        name: output.into(),
        attribute: attrs,
        ..Default::default()
    }
}

fn value_info(name: &str, dims: &[Dim]) -> ValueInfoProto {
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: DataType::Float as i32,
                shape: Some(TensorShapeProto {
                    dim: dims
                        .iter()
                        .map(|d| Dimension {
                            value: Some(d.clone()),
                            ..Default::default()
                        })
                        .collect(),
                }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Serialized ONNX bytes of the baseline. Input `frames` [n,1,224,224], output `probs` [n,2].
pub fn vgg_onnx(seed: u64) -> Vec<u8> {
    let mut rng = Rng(seed | 1);
    let mut nodes = Vec::new();
    let mut inits = Vec::new();
    let mut cur = "frames".to_string();
    let mut cin = 1;
    for (b, (reps, cout)) in BLOCKS.iter().enumerate() {
        for r in 0..*reps {
            let (w, bias, out) = (
                format!("c{b}_{r}_w"),
                format!("c{b}_{r}_b"),
                format!("c{b}_{r}"),
            );
            // He-uniform keeps activations finite through 13 layers
            let scale = (6.0 / (cin * 9) as f32).sqrt();
            inits.push(tensor(&w, &[*cout, cin, 3, 3], &mut rng, scale));
            inits.push(tensor(&bias, &[*cout], &mut rng, 0.01));
            nodes.push(node(
                "Conv",
                &[&cur, &w, &bias],
                &out,
                vec![ints("kernel_shape", &[3, 3]), ints("pads", &[1, 1, 1, 1])],
            ));
            let relu = format!("{out}_relu");
            nodes.push(node("Relu", &[&out], &relu, vec![]));
            cur = relu;
            cin = *cout;
        }
        let pool = format!("pool{b}");
        nodes.push(node(
            "MaxPool",
            &[&cur],
            &pool,
            vec![ints("kernel_shape", &[2, 2]), ints("strides", &[2, 2])],
        ));
        cur = pool;
    }
    let flat_len = cin * (VGG_INPUT / 32) * (VGG_INPUT / 32);
    nodes.push(node("Flatten", &[&cur], "flat", vec![]));
    inits.push(tensor(
        "fc1_w",
        &[HIDDEN, flat_len],
        &mut rng,
        (6.0 / flat_len as f32).sqrt(),
    ));
    inits.push(tensor("fc1_b", &[HIDDEN], &mut rng, 0.01));
    let trans_b = AttributeProto {
        name: "transB".into(),
        r#type: AttributeType::Int as i32,
        i: 1,
        ..Default::default()
    };
    nodes.push(node(
        "Gemm",
        &["flat", "fc1_w", "fc1_b"],
        "fc1",
        vec![trans_b.clone()],
    ));
    nodes.push(node("Relu", &["fc1"], "fc1_relu", vec![]));
    inits.push(tensor(
        "fc2_w",
        &[CLASSES, HIDDEN],
        &mut rng,
        (6.0 / HIDDEN as f32).sqrt(),
    ));
    inits.push(tensor("fc2_b", &[CLASSES], &mut rng, 0.01));
    nodes.push(node(
        "Gemm",
        &["fc1_relu", "fc2_w", "fc2_b"],
        "fc2",
        vec![trans_b],
    ));
    nodes.push(node("Softmax", &["fc2"], "probs", vec![]));
    let n = Dim::DimParam("n".into());
    let graph = GraphProto {
        name: "vgg_lus_baseline".into(),
        node: nodes,
        initializer: inits,
        input: vec![value_info(
            "frames",
            &[
                n.clone(),
                Dim::DimValue(1),
                Dim::DimValue(VGG_INPUT as i64),
                Dim::DimValue(VGG_INPUT as i64),
            ],
        )],
        output: vec![value_info("probs", &[n, Dim::DimValue(CLASSES as i64)])],
        ..Default::default()
    };
    ModelProto {
        ir_version: 8,
        producer_name: "pleura-bench".into(),
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: 17,
        }],
        graph: Some(graph),
        ..Default::default()
    }
    .encode_to_vec()
}

/// Multiply-accumulates per frame, for the report.
pub fn vgg_macs() -> u64 {
    let (mut side, mut cin, mut macs) = (VGG_INPUT as u64, 1u64, 0u64);
    for (reps, cout) in BLOCKS {
        for _ in 0..reps {
            macs += side * side * cout as u64 * cin * 9;
            cin = cout as u64;
        }
        side /= 2;
    }
    macs + cin * side * side * HIDDEN as u64 + (HIDDEN * CLASSES) as u64
}

#[cfg(test)]
mod tests {
    #[test]
    fn baseline_is_vgg16_sized() {
        let g = super::vgg_macs();
        assert!((14_000_000_000..16_000_000_000).contains(&g), "{g}");
    }
}
