-- The size of a session's stored conversation: the UTF-8 bytes of the
-- messages a client sees, kept at the end of every turn (and by an import,
-- and a restore), so a turn can be refused before anything is written once a
-- session holds CHAT_HISTORY_MAX_BYTES. Sessions from before this migration
-- count 0 until their next turn ends.

alter table public.chat_sessions add column if not exists history_bytes bigint not null default 0;
