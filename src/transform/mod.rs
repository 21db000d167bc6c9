//! The transform stage (`[transform]`): Spark's `selectExpr` and `filter` over each decoded row
//! and its `_kafka_*` columns, in DataFusion's SQL expression dialect — a projection (`select`)
//! and a filter (`where`). It runs right after decoding, in the consumers, so every later stage
//! (dedup, aggregation, the sink, the audit) sees the transformed rows.
//!
//! Replay must give the same rows, so only deterministic expressions are taken: a function
//! DataFusion marks anything but immutable (`now()`, `random()`, `uuid()`, `current_date()`…),
//! an aggregate, a window function or a subquery is refused at start with one line. A row whose
//! expression fails at run time (a cast that does not parse, a division by zero) becomes a dead
//! letter naming the expression and the error; the rest of its batch goes on. A row the filter
//! drops is counted (`exactly_records_filtered_total`, progress), never dead-lettered, and the
//! audit evaluates the filter again to account for it.
//!
//! Expressions bind the decoded columns by position, so each batch is first narrowed to the
//! columns the expressions were planned against (by name): whatever else a batch carries (the
//! hidden raw columns) does not move them. The `_kafka_*` columns always follow the selected
//! ones, unchanged: they are how the sink and the audit know each row's record.

use std::sync::Arc;

use deltalake::arrow::array::{Array, ArrayRef, BooleanArray};
use deltalake::arrow::compute::{cast, concat_batches, filter_record_batch};
use deltalake::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use deltalake::arrow::record_batch::RecordBatch;
use deltalake::datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use deltalake::datafusion::common::DFSchema;
use deltalake::datafusion::logical_expr::{Expr, Volatility};
use deltalake::datafusion::physical_expr::PhysicalExpr;
use deltalake::datafusion::prelude::SessionContext;

use crate::config::TransformConfig;

mod outputs;

pub use outputs::{FanOut, Outputs};

/// One expression, as written and as planned.
#[derive(Clone)]
struct Compiled {
    text: String,
    expr: Arc<dyn PhysicalExpr>,
}

impl std::fmt::Debug for Compiled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

/// A selected column: its expression and the field it fills (the type a Delta table can hold).
#[derive(Debug, Clone)]
struct Output {
    compiled: Compiled,
    field: Field,
}

/// A planned `[transform]`.
#[derive(Debug, Clone)]
pub struct Transform {
    /// The columns the expressions were planned against (the decoded row's, by name).
    input: SchemaRef,
    select: Option<Vec<Output>>,
    filter: Option<Compiled>,
}

/// What the transform made of a batch of rows.
#[derive(Debug)]
pub struct Applied {
    /// The rows out: the selected columns (all of them without `select`), then every
    /// `_kafka_*` column of the input.
    pub rows: RecordBatch,
    /// Input rows the filter dropped (indices into the input batch).
    pub filtered: Vec<usize>,
    /// Input rows whose expressions failed, with the reason.
    pub failed: Vec<(usize, String)>,
}

/// Whether a column passes through the transform untouched (the record's coordinates, and the
/// hidden raw columns a later stage may dead-letter with).
fn passes_through(name: &str) -> bool {
    name.starts_with("_kafka_")
}

impl Transform {
    /// Plans `config` against the decoded columns `decoded`; `Err` is one line naming the
    /// setting, the expression and the problem.
    pub fn new(config: &TransformConfig, decoded: &Schema) -> Result<Transform, String> {
        let input = Arc::new(decoded.clone());
        let df_schema = DFSchema::try_from(decoded.clone()).map_err(|e| format!("transform: {e}"))?;
        let ctx = SessionContext::new();
        let plan = |setting: &str, text: &str| -> Result<(Expr, Compiled), String> {
            let expr = ctx.parse_sql_expr(text, &df_schema).map_err(|e| format!("{setting} `{text}`: {}", first_line(&e)))?;
            deterministic(&expr).map_err(|why| format!("{setting} `{text}`: {why}"))?;
            let physical = ctx
                .create_physical_expr(expr.clone(), &df_schema)
                .map_err(|e| format!("{setting} `{text}`: {}", first_line(&e)))?;
            Ok((expr, Compiled { text: text.to_string(), expr: physical }))
        };
        let filter = match &config.filter {
            Some(text) => {
                let (_, compiled) = plan("transform.where", text)?;
                let t = compiled.expr.data_type(decoded).map_err(|e| format!("transform.where `{text}`: {}", first_line(&e)))?;
                if t != DataType::Boolean {
                    return Err(format!("transform.where `{text}` is {t}, not a condition (true or false)"));
                }
                Some(compiled)
            }
            None => None,
        };
        let select = match &config.select {
            None => None,
            Some(list) if list.is_empty() => return Err("transform.select is empty; leave it out to keep every column".into()),
            Some(list) => {
                let mut outputs: Vec<Output> = Vec::with_capacity(list.len());
                for text in list {
                    let (expr, compiled) = plan("transform.select", text)?;
                    let name = match &expr {
                        Expr::Alias(a) => a.name.clone(),
                        Expr::Column(c) => c.name.clone(),
                        _ => return Err(format!("transform.select `{text}`: name the column it makes: `{text} AS <name>`")),
                    };
                    if passes_through(&name) || name == crate::model::EPOCH_COL {
                        return Err(format!(
                            "transform.select `{text}`: `{name}` is a column the pipeline adds itself; name it otherwise (the `_kafka_*` columns follow the selected ones anyway)"
                        ));
                    }
                    if outputs.iter().any(|o| o.field.name() == &name) {
                        return Err(format!("transform.select names `{name}` twice"));
                    }
                    let t =
                        compiled.expr.data_type(decoded).map_err(|e| format!("transform.select `{text}`: {}", first_line(&e)))?;
                    let nullable = compiled.expr.nullable(decoded).unwrap_or(true);
                    let t = storable(&t).map_err(|why| format!("transform.select `{text}`: {why}"))?;
                    outputs.push(Output { compiled, field: Field::new(name, t, nullable) });
                }
                Some(outputs)
            }
        };
        Ok(Transform { input, select, filter })
    }

    /// The schema of the rows out, for rows decoded with `decoded` (which may carry more
    /// `_kafka_*` columns than the transform was planned with: they pass through).
    pub fn output_schema(&self, decoded: &Schema) -> SchemaRef {
        match &self.select {
            None => Arc::new(decoded.clone()),
            Some(outputs) => {
                let mut fields: Vec<Field> = outputs.iter().map(|o| o.field.clone()).collect();
                fields.extend(decoded.fields().iter().filter(|f| passes_through(f.name())).map(|f| f.as_ref().clone()));
                Arc::new(Schema::new(fields))
            }
        }
    }

    /// Applies the transform to `batch` (decoded rows). A batch whose expressions fail is
    /// evaluated row by row, so only the rows that fail are set aside.
    pub fn apply(&self, batch: &RecordBatch) -> Applied {
        match self.eval(batch) {
            Ok((rows, filtered)) => Applied { rows, filtered, failed: Vec::new() },
            Err(_) => {
                let (mut parts, mut filtered, mut failed) = (Vec::new(), Vec::new(), Vec::new());
                for i in 0..batch.num_rows() {
                    match self.eval(&batch.slice(i, 1)) {
                        Ok((row, dropped)) => {
                            if dropped.is_empty() {
                                parts.push(row);
                            } else {
                                filtered.push(i);
                            }
                        }
                        Err(why) => failed.push((i, why)),
                    }
                }
                let schema = self.output_schema(&batch.schema());
                let rows = concat_batches(&schema, &parts).expect("rows of one schema");
                Applied { rows, filtered, failed }
            }
        }
    }

    /// The rows out and the indices the filter dropped; `Err`: an expression failed on some
    /// row (which one is not known).
    fn eval(&self, batch: &RecordBatch) -> Result<(RecordBatch, Vec<usize>), String> {
        let n = batch.num_rows();
        let (batch, filtered) = match &self.filter {
            None => (batch.clone(), Vec::new()),
            Some(f) => {
                let mask = evaluate(f, &self.narrow(batch)?, n)?;
                let mask = mask.as_any().downcast_ref::<BooleanArray>().ok_or("transform.where is not a condition")?;
                // SQL's WHERE: a null condition drops the row.
                let mask: BooleanArray = mask.iter().map(|v| Some(v == Some(true))).collect();
                let filtered: Vec<usize> = (0..n).filter(|i| !mask.value(*i)).collect();
                if filtered.is_empty() {
                    (batch.clone(), filtered)
                } else {
                    (filter_record_batch(batch, &mask).map_err(|e| e.to_string())?, filtered)
                }
            }
        };
        let Some(outputs) = &self.select else { return Ok((batch, filtered)) };
        let narrowed = self.narrow(&batch)?;
        let rows = batch.num_rows();
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(outputs.len() + 6);
        for o in outputs {
            let array = evaluate(&o.compiled, &narrowed, rows)?;
            let array = if array.data_type() == o.field.data_type() {
                array
            } else {
                cast(&array, o.field.data_type()).map_err(|e| format!("transform.select `{}`: {e}", o.compiled.text))?
            };
            columns.push(array);
        }
        let schema = self.output_schema(&batch.schema());
        columns.extend(
            batch.schema().fields().iter().zip(batch.columns()).filter(|(f, _)| passes_through(f.name())).map(|(_, c)| c.clone()),
        );
        let out = RecordBatch::try_new(schema, columns).map_err(|e| e.to_string())?;
        Ok((out, filtered))
    }

    /// `batch`'s columns that the expressions were planned against, in that order.
    fn narrow(&self, batch: &RecordBatch) -> Result<RecordBatch, String> {
        let schema = batch.schema();
        let indices = self
            .input
            .fields()
            .iter()
            .map(|f| schema.index_of(f.name()).map_err(|_| format!("the decoded rows have no column `{}`", f.name())))
            .collect::<Result<Vec<_>, _>>()?;
        let narrowed = batch.project(&indices).map_err(|e| e.to_string())?;
        RecordBatch::try_new(self.input.clone(), narrowed.columns().to_vec()).map_err(|e| e.to_string())
    }
}

/// One expression over `batch`, as an array of `rows` values; the error names the expression.
fn evaluate(compiled: &Compiled, batch: &RecordBatch, rows: usize) -> Result<ArrayRef, String> {
    compiled
        .expr
        .evaluate(batch)
        .and_then(|v| v.into_array(rows))
        .map_err(|e| format!("transform `{}`: {}", compiled.text, first_line(&e)))
}

/// The first line of an error (DataFusion's carry backtraces and context on later lines).
fn first_line(e: &impl std::fmt::Display) -> String {
    e.to_string().lines().next().unwrap_or_default().to_string()
}

/// `Ok` when `expr` gives the same value every time it is evaluated on the same row.
fn deterministic(expr: &Expr) -> Result<(), String> {
    let mut problem = None;
    expr.apply(|e| {
        let why = match e {
            Expr::ScalarFunction(f) if f.func.signature().volatility != Volatility::Immutable => Some(format!(
                "{}() is not deterministic (a replay would write other values); transforms take only functions of the row",
                f.func.name()
            )),
            Expr::AggregateFunction(_) => Some("aggregates belong in [aggregate], not in a transform".to_string()),
            Expr::WindowFunction(_) => Some("window functions are not transforms of one row".to_string()),
            Expr::ScalarSubquery(_) | Expr::Exists(_) | Expr::InSubquery(_) => Some("subqueries are not supported".to_string()),
            Expr::Placeholder(_) => Some("placeholders are not supported".to_string()),
            _ => None,
        };
        Ok(match why {
            Some(why) => {
                problem = Some(why);
                TreeNodeRecursion::Stop
            }
            None => TreeNodeRecursion::Continue,
        })
    })
    .map_err(|e| first_line(&e))?;
    problem.map_or(Ok(()), Err)
}

/// The type a column of `t` is written as: strings and binaries in their plain Arrow form,
/// timestamps in microseconds, UTC (Delta's `timestamp`; one without a zone is read as UTC);
/// `Err` for what a Delta table has no type for.
fn storable(t: &DataType) -> Result<DataType, String> {
    use deltalake::kernel::engine::arrow_conversion::TryIntoKernel;
    let t = match t {
        DataType::Utf8View | DataType::LargeUtf8 => DataType::Utf8,
        DataType::BinaryView | DataType::LargeBinary | DataType::FixedSizeBinary(_) => DataType::Binary,
        DataType::Timestamp(_, _) => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        DataType::Date64 => DataType::Date32,
        DataType::Null => return Err("is a bare NULL; give it a type: CAST(NULL AS STRING)".into()),
        other => other.clone(),
    };
    let probe = Field::new("c", t.clone(), true);
    let converted: Result<deltalake::kernel::StructField, _> = (&probe).try_into_kernel();
    converted.map(|_| t.clone()).map_err(|_| format!("gives {t}, which a Delta table has no type for; CAST it"))
}
