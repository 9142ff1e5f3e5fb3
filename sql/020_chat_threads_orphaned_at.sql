-- Which registered threads lost their session, kept as it happens, so the
-- orphan sweep reads those few rows instead of comparing every thread with
-- every session: with a million sessions that comparison took 3.4 s of
-- database CPU, in every server process at start and at every sweep.
--
-- The backend's own deletes remove the chat_threads row in the same
-- statement as the session's, so the trigger below finds nothing to mark for
-- them. A session row deleted any other way (the Supabase dashboard, plain
-- SQL) marks its thread; a session created again for a marked thread (the
-- user comes back to a chat kept in localStorage) clears the mark.

alter table public.chat_threads add column if not exists orphaned_at timestamptz;

create index if not exists chat_threads_orphaned
    on public.chat_threads (thread_id) where orphaned_at is not null;

-- Threads already without a session (the one full comparison, once).
update public.chat_threads t
   set orphaned_at = now()
 where t.orphaned_at is null
   and not exists (select 1 from public.chat_sessions s where s.thread_id = t.thread_id);

create or replace function public.chat_sessions_mark_orphaned_threads()
returns trigger
language plpgsql
set search_path = ''
as $$
begin
    update public.chat_threads t
       set orphaned_at = now()
      from gone
     where t.thread_id = gone.thread_id
       and t.orphaned_at is null;
    return null;
end;
$$;

drop trigger if exists chat_sessions_mark_orphaned_threads on public.chat_sessions;
create trigger chat_sessions_mark_orphaned_threads
    after delete on public.chat_sessions
    referencing old table as gone
    for each statement execute function public.chat_sessions_mark_orphaned_threads();

create or replace function public.chat_sessions_register_thread()
returns trigger
language plpgsql
set search_path = ''
as $$
begin
    insert into public.chat_threads (thread_id) values (new.thread_id)
        on conflict (thread_id) do update set orphaned_at = null
        where public.chat_threads.orphaned_at is not null;
    return null;
end;
$$;
