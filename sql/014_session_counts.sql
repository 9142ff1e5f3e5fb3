-- How many sessions each user has, and how many of them are archived, kept by
-- triggers in the writing transaction itself (whoever writes: the backend, an
-- import, the dashboard). A list's `total` reads one row here instead of
-- counting the user's index entries, which at 100,000 sessions took longer
-- than the page itself (7 ms against 1).
--
-- A user's writes queue on their own row only until each transaction commits;
-- the backend writes one session per transaction, so that is one short update.

create table if not exists public.chat_session_counts (
    user_id  text    primary key,
    sessions integer not null default 0 check (sessions >= 0),
    archived integer not null default 0 check (archived between 0 and sessions)
);

create or replace function public.chat_sessions_count()
returns trigger
language plpgsql
set search_path = ''
as $$
begin
    if tg_op in ('DELETE', 'UPDATE') then
        update public.chat_session_counts
           set sessions = sessions - 1, archived = archived - old.is_archived::int
         where user_id = old.user_id;
    end if;
    if tg_op in ('INSERT', 'UPDATE') then
        insert into public.chat_session_counts as c (user_id, sessions, archived)
        values (new.user_id, 1, new.is_archived::int)
        on conflict (user_id) do update
           set sessions = c.sessions + 1, archived = c.archived + excluded.archived;
    end if;
    return null;
end;
$$;

create or replace function public.chat_sessions_count_truncate()
returns trigger
language plpgsql
set search_path = ''
as $$
begin
    delete from public.chat_session_counts;
    return null;
end;
$$;

-- Updates count only when they move a session between users or archive states.
drop trigger if exists chat_sessions_count on public.chat_sessions;
create trigger chat_sessions_count
    after insert or delete on public.chat_sessions
    for each row execute function public.chat_sessions_count();
drop trigger if exists chat_sessions_count_moved on public.chat_sessions;
create trigger chat_sessions_count_moved
    after update of user_id, is_archived on public.chat_sessions
    for each row when ((old.user_id, old.is_archived) is distinct from (new.user_id, new.is_archived))
    execute function public.chat_sessions_count();
drop trigger if exists chat_sessions_count_truncate on public.chat_sessions;
create trigger chat_sessions_count_truncate
    after truncate on public.chat_sessions
    for each statement execute function public.chat_sessions_count_truncate();

-- The sessions already there: counted while writes wait (reads go on), so none is missed or counted twice.
lock table public.chat_sessions in share row exclusive mode;
insert into public.chat_session_counts (user_id, sessions, archived)
select user_id, count(*), count(*) filter (where is_archived) from public.chat_sessions group by user_id
on conflict (user_id) do update set sessions = excluded.sessions, archived = excluded.archived;

alter table public.chat_session_counts enable row level security;

do $$
begin
    if to_regprocedure('auth.uid()') is not null
       and exists (select 1 from pg_roles where rolname = 'authenticated') then
        execute 'drop policy if exists chat_session_counts_select_own on public.chat_session_counts';
        execute 'create policy chat_session_counts_select_own on public.chat_session_counts
                 for select to authenticated
                 using (user_id = (select auth.uid())::text)';
    end if;
    if exists (select 1 from pg_roles where rolname = 'anon') then
        execute 'revoke all on public.chat_session_counts from anon';
    end if;
    if exists (select 1 from pg_roles where rolname = 'authenticated') then
        execute 'revoke insert, update, delete, truncate on public.chat_session_counts from authenticated';
    end if;
end;
$$;
