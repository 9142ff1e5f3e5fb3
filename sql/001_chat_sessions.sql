-- Chat sessions: one row per conversation, owned by one user.
-- Applies unchanged to a Supabase project (SQL editor or `flask db-migrate`).

create table if not exists public.chat_sessions (
    id               bigint generated always as identity primary key,
    user_id          text        not null,
    business_id      text        not null,
    -- The client's id for the session; unique per user, not globally.
    session_id       text        not null,
    -- LangGraph thread id: user_{user_id}_business_{business_id}_session_{session_id}
    thread_id        text        not null,
    session_name     text        not null default 'New Chat',
    is_archived      boolean     not null default false,
    message_count    integer     not null default 0,
    created_at       timestamptz not null default now(),
    updated_at       timestamptz not null default now(),
    last_message_at  timestamptz,
    -- Lists sort by latest activity; stored so an index can serve the order.
    last_activity_at timestamptz generated always as (coalesce(last_message_at, created_at)) stored,
    constraint chat_sessions_user_session_key unique (user_id, session_id),
    constraint chat_sessions_thread_id_key unique (thread_id),
    constraint chat_sessions_session_id_format check (session_id ~ '^[A-Za-z0-9_.:-]{1,128}$'),
    constraint chat_sessions_name_length check (char_length(session_name) between 1 and 200),
    constraint chat_sessions_message_count_nonnegative check (message_count >= 0)
);

-- Every list query is "this user's sessions, newest activity first", with or
-- without archived ones; keyset pages continue from (last_activity_at, id).
create index if not exists chat_sessions_user_activity_idx
    on public.chat_sessions (user_id, last_activity_at desc, id desc);
create index if not exists chat_sessions_user_unarchived_activity_idx
    on public.chat_sessions (user_id, last_activity_at desc, id desc)
    where not is_archived;

create or replace function public.chat_sessions_touch_updated_at()
returns trigger
language plpgsql
set search_path = ''
as $$
begin
    new.updated_at := now();
    return new;
end;
$$;

drop trigger if exists chat_sessions_touch_updated_at on public.chat_sessions;
create trigger chat_sessions_touch_updated_at
    before update on public.chat_sessions
    for each row execute function public.chat_sessions_touch_updated_at();

-- Row-level security. The backend connects as the table owner and is not
-- subject to it; clients using Supabase directly (anon / authenticated keys)
-- may only read their own sessions and write nothing: writes go through the
-- backend, which keeps the rules (names, counts, deletes).
alter table public.chat_sessions enable row level security;

do $$
begin
    if to_regprocedure('auth.uid()') is not null
       and exists (select 1 from pg_roles where rolname = 'authenticated') then
        execute 'drop policy if exists chat_sessions_select_own on public.chat_sessions';
        execute 'create policy chat_sessions_select_own on public.chat_sessions
                 for select to authenticated
                 using (user_id = (select auth.uid())::text)';
    end if;
end;
$$;
