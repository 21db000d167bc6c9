//! How the pipeline's columns meet a table's: the same (in any order), evolved by
//! `sink.schema_evolution = "add-columns"`, or refused with one line naming the column.
//!
//! Evolution only ever adds: a new nullable column, or a new nullable member of a struct
//! column. The table's schema grows in the commit of the first epoch written with the new
//! columns (a metadata action beside its files), so readers see a new column and its first
//! values together, and a crash before that commit leaves the table as it was: the replayed
//! epoch evolves it again, in one commit.

use deltalake::kernel::{DataType, PrimitiveType, StructField, StructType};

use crate::config::SchemaEvolution;

/// What evolution adds to a table: its grown schema, and the paths of the added columns and
/// struct members (`extra`, `geo.lon`).
pub type Growth = (StructType, Vec<String>);

/// The table property that records where rows of a column or member (`<prefix><path>`) begin
/// ([`AddedAt`]): rows before were written without it, which the audit must know.
pub const ADDED_AT_PREFIX: &str = "exactly.addedAt.";

/// Where a table's rows begin to carry an added column: from an epoch (one process), or per
/// partition from an offset (group mode, where each member numbers its own epochs: the first
/// offset each partition was written with it, recorded by the first commit that did; a
/// partition it names not was written only before).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AddedAt {
    /// Rows of this epoch and later have it.
    Epoch(u64),
    /// Rows of a named partition at or past its offset have it.
    Offsets(std::collections::BTreeMap<crate::model::TopicPartition, i64>),
}

impl AddedAt {
    /// The property's value: an epoch, or `topic/partition=offset` pairs joined by `,`
    /// (neither character can be in a topic's name).
    pub fn parse(value: &str) -> Option<AddedAt> {
        if let Ok(epoch) = value.parse() {
            return Some(AddedAt::Epoch(epoch));
        }
        let mut offsets = std::collections::BTreeMap::new();
        for pair in value.split(',').filter(|p| !p.is_empty()) {
            let (tp, offset) = pair.split_once('=')?;
            let (topic, partition) = tp.rsplit_once('/')?;
            offsets.insert(crate::model::TopicPartition::new(topic, partition.parse().ok()?), offset.parse().ok()?);
        }
        Some(AddedAt::Offsets(offsets))
    }

    /// Whether the row of epoch `epoch` at `tp`'s `offset` was written without the column.
    pub fn before(&self, epoch: u64, tp: &crate::model::TopicPartition, offset: i64) -> bool {
        match self {
            AddedAt::Epoch(at) => epoch < *at,
            AddedAt::Offsets(m) => m.get(tp).is_none_or(|at| offset < *at),
        }
    }
}

impl std::fmt::Display for AddedAt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AddedAt::Epoch(e) => write!(f, "{e}"),
            AddedAt::Offsets(m) => {
                let pairs: Vec<String> = m.iter().map(|(tp, o)| format!("{tp}={o}")).collect();
                write!(f, "{}", pairs.join(","))
            }
        }
    }
}

/// What becomes of a table column the pipeline does not write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Missing {
    /// Refused: dropping a column.
    Refuse,
    /// Kept, null in the pipeline's rows (nullable columns only): the pipeline takes its
    /// columns from Avro writer schemas, and a column that one of them added stays when the
    /// records of the moment are written with schemas that lack it.
    Null,
}

/// The schema the table must take before the pipeline writes to it: `None` when its columns
/// are already the pipeline's (order aside), the growth when evolution adds columns, or why the
/// pipeline cannot write to it.
pub fn reconcile(
    table: &[StructField],
    pipeline: &[StructField],
    evolution: SchemaEvolution,
    missing: Missing,
) -> Result<Option<Growth>, String> {
    let mut added = Vec::new();
    let merged = merge(table, pipeline, "", missing, &mut added)?;
    if added.is_empty() {
        return Ok(None);
    }
    let list = added.iter().map(|c| format!("`{c}`")).collect::<Vec<_>>().join(", ");
    match evolution {
        SchemaEvolution::None => Err(format!(
            "has no column {list}, which the pipeline writes; set sink.schema_evolution = \"add-columns\" to add it to the table, \
             or point sink.path at a new table"
        )),
        SchemaEvolution::AddColumns => StructType::try_new(merged).map(|s| Some((s, added))).map_err(|e| e.to_string()),
    }
}

/// The table's fields with the pipeline's new ones appended (recursively into structs); the
/// paths of the added ones go to `added`.
fn merge(
    table: &[StructField],
    pipeline: &[StructField],
    prefix: &str,
    missing: Missing,
    added: &mut Vec<String>,
) -> Result<Vec<StructField>, String> {
    let path = |name: &str| if prefix.is_empty() { name.to_string() } else { format!("{prefix}.{name}") };
    let mut out = Vec::with_capacity(pipeline.len());
    for t in table {
        let at = path(t.name());
        let found = pipeline.iter().find(|p| p.name() == t.name());
        if found.is_none() && missing == Missing::Null && prefix.is_empty() {
            if !t.is_nullable() {
                return Err(format!(
                    "has a column `{at}` ({}) declared not null, which rows written with some of the topic's writer schemas \
                     have no value for",
                    t.data_type()
                ));
            }
            out.push(t.clone());
            continue;
        }
        let Some(p) = found else {
            return Err(format!(
                "has a column `{at}` ({}) that the pipeline no longer writes; dropping a column is refused: declare it again \
                 (nullable) or point sink.path at a new table",
                t.data_type()
            ));
        };
        if p.is_nullable() != t.is_nullable() {
            let says = |nullable: bool| if nullable { "nullable" } else { "not null" };
            return Err(format!(
                "has column `{at}` {} but the pipeline declares it {}; changing a column's nullability is refused",
                says(t.is_nullable()),
                says(p.is_nullable())
            ));
        }
        let kind = match (t.data_type(), p.data_type()) {
            (a, b) if a == b => a.clone(),
            (DataType::Struct(a), DataType::Struct(b)) => {
                let members: Vec<StructField> = a.fields().cloned().collect();
                let wanted: Vec<StructField> = b.fields().cloned().collect();
                StructType::try_new(merge(&members, &wanted, &at, missing, added)?).map_err(|e| e.to_string())?.into()
            }
            (a, b) => return Err(retype(&at, a, b)),
        };
        out.push(StructField::new(t.name(), kind, t.is_nullable()));
    }
    for p in pipeline.iter().filter(|p| !table.iter().any(|t| t.name() == p.name())) {
        let at = path(p.name());
        if !p.is_nullable() {
            return Err(format!(
                "has no column `{at}`, which the pipeline declares not null; a new column must be nullable: the rows already \
                 in the table have no value for it"
            ));
        }
        added.push(at);
        out.push(p.clone());
    }
    Ok(out)
}

fn retype(at: &str, table: &DataType, pipeline: &DataType) -> String {
    use PrimitiveType::{Byte, Double, Float, Integer, Long, Short};
    let widening = matches!(
        (table, pipeline),
        (DataType::Primitive(Byte | Short | Integer), DataType::Primitive(Long))
            | (DataType::Primitive(Byte | Short), DataType::Primitive(Integer))
            | (DataType::Primitive(Float), DataType::Primitive(Double))
    );
    if widening {
        format!(
            "has column `{at}` as {table}; widening it to {pipeline} needs Delta's type widening table feature, which this \
             writer does not support: keep {table}, or point sink.path at a new table"
        )
    } else {
        format!("has column `{at}` as {table} but the pipeline writes {pipeline}; changing a column's type is refused")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn added_at_reads_back_what_it_writes_and_masks_rows_before_it() {
        use crate::model::TopicPartition;
        let (a0, a1, b0) = (TopicPartition::new("a.b-c", 0), TopicPartition::new("a.b-c", 1), TopicPartition::new("b", 0));
        let at = AddedAt::Offsets([(a0.clone(), 15), (a1.clone(), 0)].into());
        assert_eq!(at.to_string(), "a.b-c/0=15,a.b-c/1=0");
        assert_eq!(AddedAt::parse(&at.to_string()), Some(at.clone()));
        assert_eq!(AddedAt::parse("7"), Some(AddedAt::Epoch(7)));
        assert_eq!(AddedAt::parse("x=1"), None);
        assert!(at.before(99, &a0, 14) && !at.before(0, &a0, 15) && !at.before(0, &a1, 0));
        assert!(at.before(99, &b0, 1_000), "a partition it does not name was written only before");
        assert!(AddedAt::Epoch(3).before(2, &a0, 0) && !AddedAt::Epoch(3).before(3, &a0, 0));
    }

    fn f(name: &str, t: DataType, nullable: bool) -> StructField {
        StructField::new(name, t, nullable)
    }

    #[test]
    fn same_columns_in_another_order_need_nothing() {
        let table = [f("a", DataType::LONG, false), f("b", DataType::STRING, true)];
        let pipeline = [f("b", DataType::STRING, true), f("a", DataType::LONG, false)];
        assert_eq!(reconcile(&table, &pipeline, SchemaEvolution::None, Missing::Refuse), Ok(None));
    }

    #[test]
    fn new_nullable_columns_and_members_are_added_only_with_evolution() {
        let s = |fields: Vec<StructField>| DataType::from(StructType::try_new(fields).unwrap());
        let table = [f("a", DataType::LONG, false), f("s", s(vec![f("x", DataType::INTEGER, true)]), true)];
        let pipeline = [
            f("c", DataType::STRING, true),
            f("a", DataType::LONG, false),
            f("s", s(vec![f("y", DataType::DATE, true), f("x", DataType::INTEGER, true)]), true),
        ];
        let refused = reconcile(&table, &pipeline, SchemaEvolution::None, Missing::Refuse).unwrap_err();
        assert!(refused.contains("`s.y`, `c`") && refused.contains("add-columns"), "{refused}");
        let (grown, added) = reconcile(&table, &pipeline, SchemaEvolution::AddColumns, Missing::Refuse).unwrap().unwrap();
        assert_eq!(added, ["s.y", "c"]);
        let want = StructType::try_new([
            f("a", DataType::LONG, false),
            f("s", s(vec![f("x", DataType::INTEGER, true), f("y", DataType::DATE, true)]), true),
            f("c", DataType::STRING, true),
        ])
        .unwrap();
        assert_eq!(grown, want, "table order kept, new ones appended");
    }

    #[test]
    fn drops_retypes_widening_nullability_and_required_new_columns_are_refused() {
        let table = [f("a", DataType::INTEGER, true), f("b", DataType::STRING, true)];
        let cases = [
            (vec![f("a", DataType::INTEGER, true)], "column `b` (string) that the pipeline no longer writes"),
            (
                vec![f("a", DataType::STRING, true), f("b", DataType::STRING, true)],
                "`a` as integer but the pipeline writes string",
            ),
            (
                vec![f("a", DataType::LONG, true), f("b", DataType::STRING, true)],
                "widening it to long needs Delta's type widening",
            ),
            (vec![f("a", DataType::INTEGER, false), f("b", DataType::STRING, true)], "changing a column's nullability"),
            (
                vec![f("a", DataType::INTEGER, true), f("b", DataType::STRING, true), f("c", DataType::LONG, false)],
                "a new column must be nullable",
            ),
        ];
        for (pipeline, want) in cases {
            let e = reconcile(&table, &pipeline, SchemaEvolution::AddColumns, Missing::Refuse).unwrap_err();
            assert!(e.contains(want), "{e}");
        }
    }

    #[test]
    fn columns_writer_schemas_added_stay_when_rows_lack_them() {
        let table = [f("a", DataType::LONG, false), f("email", DataType::STRING, true)];
        let pipeline = [f("a", DataType::LONG, false), f("phone", DataType::STRING, true)];
        assert!(reconcile(&table, &pipeline, SchemaEvolution::AddColumns, Missing::Refuse).is_err());
        let (grown, added) = reconcile(&table, &pipeline, SchemaEvolution::AddColumns, Missing::Null).unwrap().unwrap();
        assert_eq!(added, ["phone"]);
        let names: Vec<&str> = grown.fields().map(|f| f.name().as_str()).collect();
        assert_eq!(names, ["a", "email", "phone"]);
        assert_eq!(reconcile(&table, &pipeline[..1], SchemaEvolution::AddColumns, Missing::Null), Ok(None));
        let required = [f("a", DataType::LONG, false), f("email", DataType::STRING, false)];
        let e = reconcile(&required, &pipeline[..1], SchemaEvolution::AddColumns, Missing::Null).unwrap_err();
        assert!(e.contains("`email` (string) declared not null"), "{e}");
    }
}
