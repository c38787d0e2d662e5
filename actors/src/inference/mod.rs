//! Inference: requests, the embedded llama.cpp engine, chat templates and tool-call parsing.

pub mod chat_template;
pub mod embedded;
pub mod openai;
pub mod openai_stream;
pub mod request;
pub mod sampler;
pub mod sse;
pub mod stop;
pub mod tool_calls;
