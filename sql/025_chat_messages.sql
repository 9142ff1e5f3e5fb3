-- Every message of a conversation, every branch of it: the tree a user edits, regenerates and
-- switches between. LangGraph's checkpoint keeps the active path (the model's memory); this
-- table keeps all of it, one row a message, written by the checkpoint's own write (in the
-- same transaction, under the session's FOR KEY SHARE): a branch costs the messages it adds.
--
-- A row is a message a client sees (the user's, or an assistant reply with text). parent_id is
-- the message before it on its path ('' for a conversation's first message); depth is its
-- position on that path (0 first). on_path marks the active path: those rows, by depth, are
-- what a client reads and what message_count counts.
create table if not exists public.chat_messages (
    session_row_id   bigint      not null references public.chat_sessions (id) on delete cascade,
    message_id       text        not null,
    parent_id        text        not null default '',
    user_id          text        not null,
    role             text        not null,
    content          text        not null,
    status           text,
    created_at       timestamptz,
    depth            integer     not null,
    on_path          boolean     not null default true,
    rating           smallint,
    feedback_comment text,
    rated_at         timestamptz,
    primary key (session_row_id, message_id),
    constraint chat_messages_role_check check (role in ('user', 'assistant')),
    constraint chat_messages_status_check check (status is null or status in ('stopped', 'interrupted')),
    constraint chat_messages_rating_check check (rating is null or rating in (-1, 1))
);

-- The active path by position (a page of it, newest first or last), and a message's siblings.
create index if not exists chat_messages_path_idx
    on public.chat_messages (session_row_id, depth) where on_path;
create index if not exists chat_messages_children_idx
    on public.chat_messages (session_row_id, parent_id, created_at);
-- Ratings since a date, for evaluation (flask export-feedback).
create index if not exists chat_messages_rated_idx
    on public.chat_messages (rated_at) where rating is not null;

alter table public.chat_messages enable row level security;

alter table public.chat_sessions
    -- Messages (and their text's bytes) kept only in branches other than the active one: the
    -- history caps count message_count + branch_messages, history_bytes + branch_bytes.
    add column if not exists branch_messages integer not null default 0,
    add column if not exists branch_bytes    bigint  not null default 0,
    -- The leaf a branch switch made active, until a turn writes the checkpoint that follows it:
    -- that turn builds its memory from the path (the switch itself writes no checkpoint).
    add column if not exists switched_to     text,
    -- Whether chat_messages holds this session's messages. Sessions from before this migration
    -- do not (false); their next checkpoint write, or any branch operation, fills it in.
    add column if not exists messages_indexed boolean not null default false;
alter table public.chat_sessions alter column messages_indexed set default true;

-- A recovery point keeps the session's messages too (DeletionStore), every branch and rating.
alter table public.session_backup_rows drop constraint if exists session_backup_rows_table_check;
alter table public.session_backup_rows add constraint session_backup_rows_table_check
    check (table_name in ('checkpoints', 'checkpoint_blobs', 'checkpoint_writes', 'chat_messages'));

-- Keeps branch_messages and branch_bytes: a row off the active path counts, one on it does not.
-- The common write (a turn's messages, on the path) fires nothing.
create or replace function public.chat_messages_count_branches()
returns trigger
language plpgsql
set search_path = ''
as $$
declare
    delta integer;
    row_bytes bigint;
begin
    -- A restore puts back a session row whose counts already include its branches (it names
    -- that row for its transaction, DeletionStore): counting its rows again would double them.
    if current_setting('chat.restoring_session', true) = coalesce(new.session_row_id, old.session_row_id)::text then
        return null;
    end if;
    if tg_op = 'INSERT' then
        delta := 1;
        row_bytes := octet_length(new.content);
    elsif tg_op = 'DELETE' then
        delta := -1;
        row_bytes := -octet_length(old.content);
    elsif new.on_path then  -- back on the path
        delta := -1;
        row_bytes := -octet_length(old.content);
    else  -- off it
        delta := 1;
        row_bytes := octet_length(new.content);
    end if;
    update public.chat_sessions
       set branch_messages = greatest(0, branch_messages + delta),
           branch_bytes = greatest(0, branch_bytes + row_bytes)
     where id = coalesce(new.session_row_id, old.session_row_id);
    return null;
end;
$$;

drop trigger if exists chat_messages_count_inserted_branches on public.chat_messages;
create trigger chat_messages_count_inserted_branches
    after insert on public.chat_messages
    for each row when (not new.on_path)
    execute function public.chat_messages_count_branches();
drop trigger if exists chat_messages_count_moved_branches on public.chat_messages;
create trigger chat_messages_count_moved_branches
    after update of on_path on public.chat_messages
    for each row when (old.on_path is distinct from new.on_path)
    execute function public.chat_messages_count_branches();
drop trigger if exists chat_messages_count_deleted_branches on public.chat_messages;
create trigger chat_messages_count_deleted_branches
    after delete on public.chat_messages
    for each row when (not old.on_path)
    execute function public.chat_messages_count_branches();

-- A turn's start (sql/023) with the history caps counting every branch.
create or replace function public.start_chat_run(
    p_user_id       text,
    p_session_id    text,
    p_run_id        uuid,
    p_owner         text,
    p_lease_seconds double precision,
    p_max_messages  integer,
    p_max_bytes     bigint,
    p_max_runs      integer,
    p_query         text
)
returns table (session_row public.chat_sessions, new_run_id uuid)
language plpgsql
set search_path = ''
as $$
declare
    found_session public.chat_sessions;
    taken uuid;
begin
    -- Per user, so a burst of starts cannot pass the per-user cap together.
    perform pg_advisory_xact_lock(hashtextextended('chat_session_runs:' || p_user_id, 0));
    select * into found_session
      from public.chat_sessions s where s.user_id = p_user_id and s.session_id = p_session_id;
    if not found then
        return;
    end if;
    if not found_session.is_archived
       and found_session.message_count + found_session.branch_messages < p_max_messages
       and found_session.history_bytes + found_session.branch_bytes < p_max_bytes
       and (select count(*) from public.chat_session_runs r
             where r.user_id = p_user_id and r.lease_expires_at > now()) < p_max_runs then
        insert into public.chat_session_runs as r (user_id, session_id, run_id, owner, lease_expires_at, query)
        values (p_user_id, p_session_id, p_run_id, p_owner, now() + make_interval(secs => p_lease_seconds), p_query)
        on conflict (user_id, session_id) do update
           set run_id = excluded.run_id, owner = excluded.owner, started_at = now(),
               lease_expires_at = excluded.lease_expires_at, cancel_requested_at = null,
               cancel_reason = null, reply = '', query = excluded.query
         where r.lease_expires_at < now()
        returning r.run_id into taken;
    end if;
    session_row := found_session;
    new_run_id := taken;
    return next;
end;
$$;

-- A finished run kept for late readers (sql/023), its `done` now naming the turn's messages.
create or replace function public.chat_session_runs_keep_ended()
returns trigger
language plpgsql
set search_path = ''
as $$
declare
    final jsonb := nullif(current_setting('chat.run_final', true), '')::jsonb;
    s public.chat_sessions;
begin
    select * into s from public.chat_sessions
     where user_id = old.user_id and session_id = old.session_id;
    if not found then
        return null;  -- the session was deleted: its runs go with it
    end if;
    if tg_op = 'UPDATE' or final is null or final->>'run_id' is distinct from old.run_id::text then
        final := jsonb_build_object(
            'status', 'interrupted', 'event', 'error',
            'data', jsonb_build_object('code', 'interrupted',
                                       'message', 'The reply was interrupted: the server writing it stopped'));
    end if;
    insert into public.chat_runs (run_id, user_id, session_id, status, started_at, reply, final_event, final_data)
    values (
        old.run_id, old.user_id, old.session_id, final->>'status', old.started_at,
        coalesce(final->>'reply', old.reply), final->>'event',
        case when final->>'event' = 'done'
             then coalesce(final->'data', '{}'::jsonb)  -- the turn's message ids (sql/025)
                  || jsonb_build_object('session_id', s.session_id, 'message_count', s.message_count,
                                        'session_name', s.session_name, 'run_id', old.run_id)
             else coalesce(final->'data', '{}'::jsonb) || jsonb_build_object('run_id', old.run_id)
        end)
    on conflict do nothing;
    return null;
end;
$$;

-- A turn's end (sql/023), announcing a turn that changed nothing the session row shows: an edit
-- or a regenerate leaves the count as it was (a sibling replaces a message of the path), and a
-- reply the user has not read yet leaves has_unread as it was; its new branch is still news.
create or replace function public.end_chat_run(
    p_user_id       text,
    p_session_id    text,
    p_run_id        uuid,
    p_outcome       text,
    p_checkpoint_id text,
    p_message_count integer,
    p_history_bytes bigint
)
returns table (session_row public.chat_sessions, counted boolean, queued boolean)
language plpgsql
set search_path = ''
as $$
declare
    found_session public.chat_sessions;
    before_end public.chat_sessions;
    latest text;
begin
    select * into found_session
      from public.chat_sessions s where s.user_id = p_user_id and s.session_id = p_session_id
       for update;
    if not found then
        return;
    end if;
    before_end := found_session;
    select c.checkpoint_id into latest
      from public.checkpoints c
     where c.thread_id = found_session.thread_id and c.checkpoint_ns = ''
     order by c.checkpoint_id desc
     limit 1;
    if p_checkpoint_id is null or latest is distinct from p_checkpoint_id then
        session_row := found_session;
        counted := false;
        queued := false;
        return next;
        return;
    end if;
    -- The session first, then the run: their events go out in that order
    -- (session.updated with the final count, then run.finished).
    if p_message_count > found_session.message_count then
        perform public.increment_session_message_count(
            p_user_id, p_session_id, p_message_count - found_session.message_count);
    end if;
    update public.chat_sessions s
       set has_unread = s.has_unread or p_outcome = 'done',
           message_count = p_message_count,  -- only a custom graph that removes messages lowers it
           history_bytes = p_history_bytes
     where s.id = found_session.id
    returning s.* into found_session;
    -- What sql/009's trigger looks at, unchanged: it will say nothing, so say it here.
    if (found_session.session_name, found_session.is_archived, found_session.message_count,
        found_session.last_message_at, found_session.has_unread)
       is not distinct from
       (before_end.session_name, before_end.is_archived, before_end.message_count,
        before_end.last_message_at, before_end.has_unread) then
        perform public.emit_session_event(p_user_id, p_session_id, 'session.updated', to_jsonb(found_session));
    end if;
    perform set_config('chat.run_outcome', p_outcome, true);
    delete from public.chat_session_runs r where r.run_id = p_run_id;
    session_row := found_session;
    counted := true;
    -- After the delete (which waits for an enqueue holding the lease row), in a new snapshot:
    -- a message queued behind this run is seen, so the ender starts it.
    queued := exists (select 1 from public.chat_queued_runs q
                       where q.user_id = p_user_id and q.session_id = p_session_id);
    return next;
end;
$$;

-- A branch switch: the path through p_message_id, down to its newest leaf, becomes the active
-- one, in one statement under the session row's lock. Refused ('busy') while a reply is being
-- written, as a new message would be. message_count follows the path; the next turn's memory
-- is built from it (switched_to). Returns the outcome and the session row.
create or replace function public.switch_session_branch(p_user_id text, p_session_id text, p_message_id text)
returns table (outcome text, session_row public.chat_sessions)
language plpgsql
set search_path = ''
as $$
declare
    found_session public.chat_sessions;
    target public.chat_messages;
    leaf text;
    old_leaf text;
    path_count integer;
    path_bytes bigint;
    emitted boolean;
begin
    select * into found_session from public.chat_sessions s
     where s.user_id = p_user_id and s.session_id = p_session_id
       for update;
    if not found then
        outcome := 'no_session';
        return next;
        return;
    end if;
    select * into target from public.chat_messages m
     where m.session_row_id = found_session.id and m.message_id = p_message_id;
    if not found then
        outcome := 'no_message';
        return next;
        return;
    end if;
    if exists (select 1 from public.chat_session_runs r
                where r.user_id = p_user_id and r.session_id = p_session_id and r.lease_expires_at > now()) then
        outcome := 'busy';
        session_row := found_session;
        return next;
        return;
    end if;
    -- Down from the target, the newest child each step; then up to the root: the new path.
    with recursive down as (
        select target.message_id as message_id, 0 as step
        union all
        select c.message_id, d.step + 1 from down d
          cross join lateral (
              select m.message_id from public.chat_messages m
               where m.session_row_id = found_session.id and m.parent_id = d.message_id
               order by m.created_at desc nulls last, m.message_id desc limit 1) c
    )
    select message_id into leaf from down order by step desc limit 1;
    select m.message_id into old_leaf from public.chat_messages m
     where m.session_row_id = found_session.id and m.on_path order by m.depth desc limit 1;
    with recursive up as (
        select m.message_id, m.parent_id, m.content from public.chat_messages m
         where m.session_row_id = found_session.id and m.message_id = leaf
        union all
        select m.message_id, m.parent_id, m.content from up
          join public.chat_messages m on m.session_row_id = found_session.id and m.message_id = up.parent_id
    ), path as (select message_id, content from up),
    moved_off as (
        update public.chat_messages m set on_path = false
         where m.session_row_id = found_session.id and m.on_path
           and m.message_id not in (select message_id from path)
        returning 1
    ), moved_on as (
        update public.chat_messages m set on_path = true
         where m.session_row_id = found_session.id and not m.on_path
           and m.message_id in (select message_id from path)
        returning 1
    )
    select count(*)::integer, coalesce(sum(octet_length(content)), 0)::bigint
      into path_count, path_bytes from path;
    -- A count that does not change announces nothing by itself (sql/009): say it here.
    emitted := path_count is distinct from found_session.message_count;
    update public.chat_sessions s
       set message_count = path_count, history_bytes = path_bytes,
           switched_to = case when leaf is not distinct from old_leaf then s.switched_to else leaf end
     where s.id = found_session.id
    returning * into found_session;
    if not emitted then
        perform public.emit_session_event(p_user_id, p_session_id, 'session.updated', to_jsonb(found_session));
    end if;
    outcome := 'switched';
    session_row := found_session;
    return next;
end;
$$;

-- A rating on an assistant reply (null clears it), announced as session.updated without
-- touching the session row: a rating does not move a session in the list.
create or replace function public.rate_chat_message(
    p_user_id text, p_session_id text, p_message_id text, p_rating smallint, p_comment text
)
returns setof public.chat_messages
language plpgsql
set search_path = ''
as $$
declare
    found_session public.chat_sessions;
    rated public.chat_messages;
begin
    select * into found_session from public.chat_sessions s
     where s.user_id = p_user_id and s.session_id = p_session_id;
    if not found then
        return;
    end if;
    update public.chat_messages m
       set rating = p_rating,
           feedback_comment = case when p_rating is null then null else p_comment end,
           rated_at = case when p_rating is null then null else now() end
     where m.session_row_id = found_session.id and m.message_id = p_message_id and m.role = 'assistant'
    returning * into rated;
    if rated.message_id is null then
        return;
    end if;
    perform public.emit_session_event(p_user_id, p_session_id, 'session.updated', to_jsonb(found_session));
    return next rated;
end;
$$;

revoke execute on function public.chat_messages_count_branches() from public;
revoke execute on function public.switch_session_branch(text, text, text) from public;
revoke execute on function public.rate_chat_message(text, text, text, smallint, text) from public;
do $$
declare
    role_name text;
begin
    foreach role_name in array array['anon', 'authenticated'] loop
        if exists (select 1 from pg_roles where rolname = role_name) then
            execute format('revoke all on public.chat_messages from %I', role_name);
            execute format('revoke execute on function public.chat_messages_count_branches(), '
                           'public.switch_session_branch(text, text, text), '
                           'public.rate_chat_message(text, text, text, smallint, text) from %I', role_name);
        end if;
    end loop;
    -- A signed-in user may read their own messages; the anon key nothing.
    if to_regprocedure('auth.uid()') is not null
       and exists (select 1 from pg_roles where rolname = 'authenticated') then
        execute 'grant select on public.chat_messages to authenticated';
        execute 'drop policy if exists chat_messages_select_own on public.chat_messages';
        execute 'create policy chat_messages_select_own on public.chat_messages
                 for select to authenticated
                 using (user_id = (select auth.uid())::text)';
    end if;
end;
$$;
