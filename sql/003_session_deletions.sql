-- Audit trail of deleted sessions: who, which, when, and how many rows each
-- table lost. Never any message content.

create table if not exists public.session_deletions (
    id           bigint generated always as identity primary key,
    user_id      text        not null,
    business_id  text        not null,
    session_id   text        not null,
    thread_id    text        not null,
    -- Whether a chat_sessions row existed (false: a thread that lived only in
    -- the browser's localStorage and the checkpoint tables).
    had_session_row boolean  not null,
    forced       boolean     not null default false,
    rows_deleted jsonb       not null,
    deleted_at   timestamptz not null default now()
);

create index if not exists session_deletions_user_idx
    on public.session_deletions (user_id, deleted_at desc);

alter table public.session_deletions enable row level security;
