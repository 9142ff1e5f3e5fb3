-- The LangGraph threads this backend made: registered when their session is
-- created (by trigger, whoever inserts), and dropped with the session's delete.
-- The orphan sweep only ever deletes threads found here with no session row,
-- never threads it merely recognises by the shape of their name, so other
-- code keeping threads in the same tables is safe. created_at also gives a
-- thread with no checkpoint row (only blobs or writes) a real age.

create table if not exists public.chat_threads (
    thread_id   text        primary key,
    created_at  timestamptz not null default now()
);

insert into public.chat_threads (thread_id, created_at)
select thread_id, created_at from public.chat_sessions
on conflict (thread_id) do nothing;

create or replace function public.chat_sessions_register_thread()
returns trigger
language plpgsql
set search_path = ''
as $$
begin
    insert into public.chat_threads (thread_id) values (new.thread_id) on conflict (thread_id) do nothing;
    return null;
end;
$$;

drop trigger if exists chat_sessions_register_thread on public.chat_sessions;
create trigger chat_sessions_register_thread
    after insert on public.chat_sessions
    for each row execute function public.chat_sessions_register_thread();

alter table public.chat_threads enable row level security;

do $$
begin
    if exists (select 1 from pg_roles where rolname = 'anon') then
        execute 'revoke all on public.chat_threads from anon';
    end if;
    if exists (select 1 from pg_roles where rolname = 'authenticated') then
        execute 'revoke all on public.chat_threads from authenticated';
    end if;
end;
$$;
