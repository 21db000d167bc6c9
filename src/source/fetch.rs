//! One partition's fetch queue, read in batches.
//!
//! The pipeline's single librdkafka client fetches every assigned partition; each partition's
//! messages are routed to a queue of their own (as `split_partition_queue` does), which one
//! consumer actor drains. Reading goes through `rd_kafka_consume_batch_queue`: one call hands
//! over up to a batch of messages, where the per-message poll API pays a clock read, an event
//! and an allocation for every record. Messages stay in librdkafka's buffers until the decode
//! stage has read them (a [`Msg`] borrows its queue; dropping it releases the message).

use std::ffi::{c_void, CString};
use std::ptr::NonNull;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::bindings as rdsys;
use rdkafka::consumer::Consumer;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use tokio::sync::Notify;

use crate::model::{RecordView, TopicPartition};
use crate::source::PipelineConsumer;

/// A partition's queue, split from the shared client.
pub struct PartitionFetch {
    tp: TopicPartition,
    queue: NonNull<rdsys::rd_kafka_queue_t>,
    /// Woken by librdkafka (from its own threads) when the queue turns non-empty.
    ready: Arc<Notify>,
    /// The pointer handed to librdkafka as the callback's opaque; freed after the callback is
    /// disabled.
    opaque: *mut Arc<Notify>,
    /// Keeps the client (and so the queue's messages) alive.
    consumer: Arc<PipelineConsumer>,
}

// SAFETY: librdkafka queues are thread-safe (every operation takes the queue's lock); the
// callback's opaque is only read by the callback, which is disabled before it is freed.
unsafe impl Send for PartitionFetch {}
unsafe impl Sync for PartitionFetch {}

unsafe extern "C" fn on_nonempty(_rk: *mut rdsys::rd_kafka_t, opaque: *mut c_void) {
    // SAFETY: `opaque` is the `Box<Arc<Notify>>` of a live `PartitionFetch` (see `Drop`).
    let ready = unsafe { &*(opaque as *const Arc<Notify>) };
    ready.notify_one();
}

impl PartitionFetch {
    /// Splits `tp`'s queue from `consumer`'s main queue. `None` if librdkafka does not know the
    /// partition.
    pub fn split(consumer: &Arc<PipelineConsumer>, tp: &TopicPartition) -> Option<PartitionFetch> {
        let topic = CString::new(tp.topic.as_bytes()).ok()?;
        // SAFETY: the client pointer is valid while `consumer` lives; the returned queue is ours
        // to destroy.
        let queue = NonNull::new(unsafe {
            rdsys::rd_kafka_queue_get_partition(consumer.client().native_ptr(), topic.as_ptr(), tp.partition)
        })?;
        let ready = Arc::new(Notify::new());
        let opaque = Box::into_raw(Box::new(ready.clone()));
        // SAFETY: the queue is valid; the opaque outlives the callback registration (Drop).
        unsafe {
            rdsys::rd_kafka_queue_forward(queue.as_ptr(), std::ptr::null_mut());
            rdsys::rd_kafka_queue_cb_event_enable(queue.as_ptr(), Some(on_nonempty), opaque as *mut c_void);
        }
        Some(PartitionFetch { tp: tp.clone(), queue, ready, opaque, consumer: consumer.clone() })
    }

    /// Waits up to `wait` for the queue to hold something, then takes at most `max` messages
    /// without blocking. An empty batch means nothing arrived in time.
    pub async fn next_batch(&self, max: usize, wait: Duration) -> Vec<Msg<'_>> {
        let batch = self.take(max);
        if !batch.is_empty() {
            return batch;
        }
        drop(batch);
        // `Notify` keeps a wake-up that arrives between the empty take and this wait.
        let _ = tokio::time::timeout(wait, self.ready.notified()).await;
        self.take(max)
    }

    /// Whether the partition is read to its end, for now: nothing queued, and the position
    /// (the offset after the last record or transaction marker handed over, or `next` — where
    /// the reader starts, when nothing was handed over yet) at the high watermark of the last
    /// fetch response. (librdkafka's end-of-partition event would say the same, but a batch read
    /// moves the position past it: `enable.partition.eof` stays off.)
    pub fn read_to_end(&self, next: i64) -> bool {
        let client = self.consumer.client().native_ptr();
        let Ok(topic) = CString::new(self.tp.topic.as_bytes()) else { return false };
        let (mut low, mut high) = (0i64, -1i64);
        // SAFETY: the client and queue are valid while `self` lives; librdkafka writes the two
        // offsets and the position into memory we own.
        unsafe {
            if rdsys::rd_kafka_queue_length(self.queue.as_ptr()) > 0 {
                return false;
            }
            let known = rdsys::rd_kafka_get_watermark_offsets(client, topic.as_ptr(), self.tp.partition, &mut low, &mut high);
            if known != rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR || high < 0 {
                return false;
            }
        }
        let mut list = rdkafka::TopicPartitionList::with_capacity(1);
        list.add_partition(&self.tp.topic, self.tp.partition);
        // SAFETY: as above; the list is ours.
        let positioned = unsafe { rdsys::rd_kafka_position(client, list.ptr()) };
        let position = match list.find_partition(&self.tp.topic, self.tp.partition).map(|e| e.offset()) {
            Some(rdkafka::Offset::Offset(o)) if positioned == rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR => o,
            _ => i64::MIN,
        };
        position.max(next) >= high
    }

    /// Takes up to `max` messages that are already queued.
    fn take(&self, max: usize) -> Vec<Msg<'_>> {
        let mut ptrs: Vec<*mut rdsys::rd_kafka_message_t> = Vec::with_capacity(max);
        // SAFETY: the queue is valid; librdkafka writes at most `max` message pointers, each of
        // which we own until `rd_kafka_message_destroy`.
        let n = unsafe { rdsys::rd_kafka_consume_batch_queue(self.queue.as_ptr(), 0, ptrs.as_mut_ptr(), max) };
        // SAFETY: librdkafka initialised the first `n` entries (n is -1 on error: none).
        unsafe { ptrs.set_len(n.max(0) as usize) };
        ptrs.into_iter().filter_map(NonNull::new).map(|p| Msg { ptr: p, topic: &self.tp.topic }).collect()
    }
}

impl Drop for PartitionFetch {
    fn drop(&mut self) {
        // SAFETY: disabling the callback (under the queue's lock) guarantees librdkafka will not
        // call it again, so the opaque can then be freed; the queue is destroyed once.
        unsafe {
            rdsys::rd_kafka_queue_cb_event_enable(self.queue.as_ptr(), None, std::ptr::null_mut());
            rdsys::rd_kafka_queue_destroy(self.queue.as_ptr());
            drop(Box::from_raw(self.opaque));
        }
    }
}

/// One message owned from librdkafka (a record, or a consume error: see [`Msg::error`]);
/// released on drop.
pub struct Msg<'q> {
    ptr: NonNull<rdsys::rd_kafka_message_t>,
    topic: &'q str,
}

// SAFETY: a librdkafka message may be read and destroyed from any thread.
unsafe impl Send for Msg<'_> {}
unsafe impl Sync for Msg<'_> {}

impl Msg<'_> {
    fn raw(&self) -> &rdsys::rd_kafka_message_t {
        // SAFETY: valid until drop.
        unsafe { self.ptr.as_ref() }
    }

    /// The consume error this message carries instead of a record, if any.
    pub fn error(&self) -> Option<KafkaError> {
        let err = self.raw().err;
        (err != rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR)
            .then(|| KafkaError::MessageConsumption(RDKafkaErrorCode::from(err)))
    }
}

fn bytes<'a>(ptr: *mut c_void, len: usize) -> Option<&'a [u8]> {
    // SAFETY: librdkafka gives a pointer to `len` bytes that live as long as the message.
    (!ptr.is_null()).then(|| unsafe { std::slice::from_raw_parts(ptr as *const u8, len) })
}

impl RecordView for Msg<'_> {
    fn topic(&self) -> &str {
        self.topic
    }
    fn partition(&self) -> i32 {
        self.raw().partition
    }
    fn offset(&self) -> i64 {
        self.raw().offset
    }
    fn timestamp_ms(&self) -> Option<i64> {
        let mut kind = rdsys::rd_kafka_timestamp_type_t::RD_KAFKA_TIMESTAMP_NOT_AVAILABLE;
        // SAFETY: valid message, valid out-pointer.
        let ts = unsafe { rdsys::rd_kafka_message_timestamp(self.ptr.as_ptr(), &mut kind) };
        (kind != rdsys::rd_kafka_timestamp_type_t::RD_KAFKA_TIMESTAMP_NOT_AVAILABLE && ts != -1).then_some(ts)
    }
    fn key(&self) -> Option<&[u8]> {
        bytes(self.raw().key, self.raw().key_len)
    }
    fn payload(&self) -> Option<&[u8]> {
        bytes(self.raw().payload, self.raw().len)
    }
    fn headers(&self) -> Vec<(&str, Option<&[u8]>)> {
        let mut headers: *mut rdsys::rd_kafka_headers_t = std::ptr::null_mut();
        // SAFETY: valid message, valid out-pointer; the headers belong to the message.
        let err = unsafe { rdsys::rd_kafka_message_headers(self.ptr.as_ptr(), &mut headers) };
        if err != rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR || headers.is_null() {
            return Vec::new();
        }
        let mut out = Vec::new();
        for i in 0.. {
            let (mut name, mut value, mut size): (*const std::ffi::c_char, *const c_void, usize) =
                (std::ptr::null(), std::ptr::null(), 0);
            // SAFETY: `headers` lives as long as the message; the out-pointers are valid.
            let err = unsafe { rdsys::rd_kafka_header_get_all(headers, i, &mut name, &mut value, &mut size) };
            if err != rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR || name.is_null() {
                break;
            }
            // SAFETY: a NUL-terminated name that lives as long as the message.
            let name = unsafe { std::ffi::CStr::from_ptr(name) }.to_str().unwrap_or("");
            out.push((name, bytes(value as *mut c_void, size)));
        }
        out
    }
}

impl Drop for Msg<'_> {
    fn drop(&mut self) {
        // SAFETY: we own the message and release it once.
        unsafe { rdsys::rd_kafka_message_destroy(self.ptr.as_ptr()) };
    }
}
