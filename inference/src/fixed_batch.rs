//! tract plans a graph whose shapes are all known far better than one with a symbolic
//! batch: pleura-lite ran 120 ms per frame with its `n × 1 × 192 × 192` input and 16 ms
//! with `1 × 1 × 192 × 192` (its depthwise convolutions get their own kernels only then).
//! The pipeline runs one frame per call anyway (`FRAMES_PER_RUN`), so for tract the
//! model's batch dimension is fixed to 1 and larger runs are made a frame at a time.
//! The SHA-256 was checked on the shipped bytes; only the declared shapes change.

pub fn batch_of_one(bytes: &[u8]) -> Result<Vec<u8>, String> {
    use prost::Message;
    use tract_onnx::pb::tensor_shape_proto::dimension::Value as Dim;
    use tract_onnx::pb::{type_proto, ModelProto, ValueInfoProto};

    fn dims(
        v: &mut ValueInfoProto,
    ) -> Option<&mut Vec<tract_onnx::pb::tensor_shape_proto::Dimension>> {
        let type_proto::Value::TensorType(t) = v.r#type.as_mut()?.value.as_mut()?;
        Some(&mut t.shape.as_mut()?.dim)
    }
    let mut model = ModelProto::decode(bytes).map_err(|e| e.to_string())?;
    let graph = model.graph.as_mut().ok_or("no graph")?;
    let batch: Vec<String> = graph
        .input
        .iter_mut()
        .filter_map(|i| match dims(i)?.first()?.value.as_ref()? {
            Dim::DimParam(p) => Some(p.clone()),
            Dim::DimValue(_) => None,
        })
        .collect();
    let infos = graph
        .input
        .iter_mut()
        .chain(graph.output.iter_mut())
        .chain(graph.value_info.iter_mut());
    for info in infos {
        for d in dims(info).into_iter().flatten() {
            if matches!(&d.value, Some(Dim::DimParam(p)) if batch.contains(p)) {
                d.value = Some(Dim::DimValue(1));
            }
        }
    }
    Ok(model.encode_to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;
    use tract_onnx::pb::tensor_shape_proto::dimension::Value as Dim;

    fn first_dims(bytes: &[u8]) -> Vec<Option<Dim>> {
        let m = tract_onnx::pb::ModelProto::decode(bytes).unwrap();
        let g = m.graph.unwrap();
        g.input
            .iter()
            .chain(g.output.iter())
            .map(|v| {
                let tract_onnx::pb::type_proto::Value::TensorType(t) =
                    v.r#type.clone().unwrap().value.unwrap();
                t.shape.unwrap().dim[0].value.clone()
            })
            .collect()
    }

    #[test]
    fn the_shipped_models_batch_becomes_one_and_nothing_else_changes() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../models/pleura-lite.onnx");
        let bytes = std::fs::read(path).unwrap();
        let before = first_dims(&bytes);
        assert!(
            before.iter().all(|d| matches!(d, Some(Dim::DimParam(_)))),
            "{before:?}"
        );
        let fixed = batch_of_one(&bytes).unwrap();
        let after = first_dims(&fixed);
        assert_eq!(after.len(), before.len());
        assert!(
            after.iter().all(|d| *d == Some(Dim::DimValue(1))),
            "{after:?}"
        );
        let (a, b) = (
            tract_onnx::pb::ModelProto::decode(&bytes[..]).unwrap(),
            tract_onnx::pb::ModelProto::decode(&fixed[..]).unwrap(),
        );
        let (ga, gb) = (a.graph.unwrap(), b.graph.unwrap());
        assert_eq!(ga.node, gb.node);
        assert_eq!(ga.initializer, gb.initializer);
        assert!(batch_of_one(b"not a model").is_err());
    }
}
