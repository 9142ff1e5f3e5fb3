-- A TRUNCATE of chat_sessions (a development reset, an operator's cleanup)
-- fires no delete trigger, so sql/020 would leave every thread unmarked and
-- the sweep would never see them. Truncating the sessions orphans every
-- registered thread: mark them all (the sweep still checks each one for a
-- session before deleting it).

create or replace function public.chat_sessions_mark_all_threads_orphaned()
returns trigger
language plpgsql
set search_path = ''
as $$
begin
    update public.chat_threads set orphaned_at = now() where orphaned_at is null;
    return null;
end;
$$;

drop trigger if exists chat_sessions_mark_all_threads_orphaned on public.chat_sessions;
create trigger chat_sessions_mark_all_threads_orphaned
    after truncate on public.chat_sessions
    for each statement execute function public.chat_sessions_mark_all_threads_orphaned();
