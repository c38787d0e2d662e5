//! Inference: requests, the embedded llama.cpp engine, chat templates, tool-call parsing and
//! `tool_choice` (forced calls by grammar).

pub mod chat_template;
pub mod embedded;
pub mod grammar;
pub mod openai;
pub mod openai_stream;
pub mod request;
pub mod sampler;
pub mod sse;
pub mod stop;
pub mod tool_calls;
pub mod tool_choice;
