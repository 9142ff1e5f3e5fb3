-- Chat turns: who may write to a session right now, and how sessions get named.

-- Where a session's name came from: 'default' ("New Chat"), 'user' (given at
-- create or rename), 'auto' (the naming helper). Auto-naming writes only while
-- it is 'default', so a rename always wins.
alter table public.chat_sessions
    add column if not exists name_source text not null default 'default',
    add column if not exists naming_claimed_at timestamptz;

do $$
begin
    if not exists (select 1 from pg_constraint where conname = 'chat_sessions_name_source_check') then
        alter table public.chat_sessions
            add constraint chat_sessions_name_source_check check (name_source in ('default', 'user', 'auto'));
    end if;
end;
$$;

-- Sessions that have messages but no name yet (a crash between the first
-- message and its naming); small, and found again at start.
create index if not exists chat_sessions_unnamed_idx
    on public.chat_sessions (created_at)
    where name_source = 'default' and message_count > 0;

-- A reply being written. One row per busy session, held by one server process
-- with a lease it keeps renewing; if the process dies, the lease expires and
-- the session is free again. Deleting the session deletes its run.
create table if not exists public.chat_session_runs (
    user_id             text        not null,
    session_id          text        not null,
    run_id              uuid        not null unique,
    -- host:pid of the process writing the reply, for operators.
    owner               text        not null,
    started_at          timestamptz not null default now(),
    lease_expires_at    timestamptz not null,
    -- Set by a forced delete in any process; the owner stops the reply.
    cancel_requested_at timestamptz,
    primary key (user_id, session_id),
    foreign key (user_id, session_id) references public.chat_sessions (user_id, session_id) on delete cascade
);

create index if not exists chat_session_runs_lease_idx on public.chat_session_runs (lease_expires_at);

alter table public.chat_session_runs enable row level security;
